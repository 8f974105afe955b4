//! The shared core of the Meerkat server: what every layer above the codecs needs
//! to agree on.
//!
//! - [`ServerContext`]: the immutable snapshot of one running server (hosts, stores,
//!   frozen hooks, the router), passed explicitly everywhere (no globals).
//! - [`hooks`]: how modules plug in (IQ handlers by namespace, session hooks, delivery
//!   hooks), modelled on MongooseIM's `gen_hook`. Built once at start, then frozen.
//! - [`router::Router`]: the interface the stanza path routes through. The local
//!   implementation lives in `meerkat-router`; a cluster transport implements the
//!   same interface later.
//! - [`session::SessionState`]: the state of one bound client session that hooks may
//!   read and change (roster cache, presence, blocklist cache, …).
#![warn(missing_docs)]

pub mod cluster;
pub mod context;
pub mod hooks;
pub mod resumption;
pub mod router;
pub mod session;
pub mod util;

pub use context::ServerContext;
pub use hooks::{Flow, HookRegistry, Hooks, IqRequest, IqResult, Module};
pub use router::{Router, SessionInfo};
pub use session::{event_as, Event, RosterCache, SessionEvent, SessionId, SessionMsg, SessionState};

pub use context::account;
pub use hooks::{DeliveryHooks, IqHandler, IqScope, OfflineOutcome, SessionHooks};
pub use router::SessionHandle;
pub use session::RosterChange;
