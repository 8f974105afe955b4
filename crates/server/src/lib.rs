//! meerkat (placeholder)
