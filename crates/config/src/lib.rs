//! meerkat-config (placeholder)
