//! meerkat-modules (placeholder)
