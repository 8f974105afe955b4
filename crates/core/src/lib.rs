//! meerkat-core (placeholder)
