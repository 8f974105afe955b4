//! meerkat-storage-sqlite (placeholder)
