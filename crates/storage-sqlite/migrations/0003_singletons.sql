-- Cluster-wide singletons (MUC rooms): who owns each, with a revision for
-- compare-and-set ownership changes.
CREATE TABLE cluster_singletons (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    revision BIGINT NOT NULL
);
