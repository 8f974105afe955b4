//! meerkat-xml (placeholder)
