//! The local router: Meerkat's implementation of [`meerkat_core::Router`] for one
//! node.
//!
//! - [`table::SessionTable`]: every bound session of this node, sharded by bare JID
//!   behind short read/write locks (no global lock on the routing path; a lookup
//!   holds one shard's read lock for a few hundred nanoseconds and never across an
//!   `.await`).
//! - [`LocalRouter::route`]: the delivery rules of RFC 6120 §10 and RFC 6121 §8 for
//!   messages, presence and IQs addressed to local users, to the server itself, or
//!   elsewhere. Delivery is a non-blocking `try_send` into the target session's
//!   bounded mailbox; a full mailbox closes that session (its client stopped
//!   reading) and the stanza takes the offline path, so nothing is lost.
//!
//! In a cluster the table also holds the other nodes' sessions (kept current by
//! the cluster transport, `meerkat-cluster`, through [`LocalRouter`]'s `remote_*`
//! methods), so the same rules pick the target wherever it is; a target on
//! another node is handed to the [`meerkat_core::cluster::ClusterLink`], and
//! that node delivers it with [`LocalRouter::deliver_forwarded`].
#![warn(missing_docs)]

mod deliver;
mod remote;
pub mod table;

pub use deliver::LocalRouter;
