//! meerkat-transport (placeholder)
