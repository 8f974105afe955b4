//! meerkat-stream (placeholder)
