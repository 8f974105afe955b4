//! meerkat-stanza (placeholder)
