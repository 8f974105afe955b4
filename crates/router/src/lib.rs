//! meerkat-router (placeholder)
