//! meerkat-storage-postgres (placeholder)
