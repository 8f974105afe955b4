//! `[modules.mod_x]` tables: a module is enabled by the presence of its table; the
//! table's keys are its options (named as in MongooseIM where a MongooseIM
//! equivalent exists).

use serde::Deserialize;

use crate::schema::Report;

/// Every module Meerkat has. `None` = disabled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modules {
    /// Roster options (RFC 6121 §2; the roster itself is always on).
    pub mod_roster: Option<RosterCfg>,
    /// Service discovery (XEP-0030).
    pub mod_disco: Option<DiscoCfg>,
    /// XMPP ping (XEP-0199), including server-initiated pings.
    pub mod_ping: Option<PingCfg>,
    /// Software version (XEP-0092).
    pub mod_version: Option<VersionCfg>,
    /// Entity time (XEP-0202).
    pub mod_time: Option<Empty>,
    /// Last activity (XEP-0012).
    pub mod_last: Option<Empty>,
    /// vCard-temp (XEP-0054).
    pub mod_vcard: Option<VcardCfg>,
    /// Private XML storage (XEP-0049).
    pub mod_private: Option<PrivateCfg>,
    /// Blocking command (XEP-0191).
    pub mod_blocking: Option<Empty>,
    /// Offline messages (XEP-0160) with XEP-0203 delay stamps.
    pub mod_offline: Option<OfflineCfg>,
    /// In-band registration (XEP-0077); off unless configured.
    pub mod_register: Option<RegisterCfg>,
    /// Unique and stable stanza IDs (XEP-0359).
    pub mod_stanza_id: Option<Empty>,
    /// Message carbons (XEP-0280).
    pub mod_carboncopy: Option<Empty>,
    /// Client state indication (XEP-0352).
    pub mod_csi: Option<CsiCfg>,
    /// Stream management (XEP-0198): acks and resumption.
    pub mod_stream_management: Option<SmCfg>,
    /// Message archive (XEP-0313) with preferences (XEP-0441) and retraction (XEP-0424).
    pub mod_mam: Option<MamCfg>,
    /// Multi-user chat (XEP-0045) on `conference.<host>`.
    pub mod_muc: Option<MucCfg>,
    /// MUC Light (MongooseIM's `urn:xmpp:muclight:0`) on `muclight.<host>`.
    pub mod_muc_light: Option<MucLightCfg>,
}

/// `[modules.mod_muc_light]` (option names as in MongooseIM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MucLightCfg {
    /// The service's domain; `@HOST@` stands for each served host.
    #[serde(default = "default_muc_light_host")]
    pub host: String,
    /// Every occupant is a member (no owner).
    #[serde(default)]
    pub equal_occupants: bool,
    /// Most occupants of a room.
    #[serde(default = "default_muc_light_max_occupants")]
    pub max_occupants: usize,
    /// Users may refuse to be added to rooms, by room or by who adds them.
    #[serde(default = "default_true")]
    pub blocking: bool,
    /// Members may change the configuration (else the owner only).
    #[serde(default)]
    pub all_can_configure: bool,
    /// Members may add members (else the owner only).
    #[serde(default)]
    pub all_can_invite: bool,
    /// Users' rooms appear in their rosters (group `urn:xmpp:muclight:0`).
    #[serde(default)]
    pub rooms_in_rosters: bool,
    /// The configuration fields rooms have, with their defaults (string values).
    #[serde(default = "default_muc_light_schema")]
    pub config_schema: Vec<MucLightField>,
    /// Stanzas that may wait for one room; more get `resource-constraint`.
    #[serde(default = "default_muc_queue")]
    pub room_queue: usize,
    /// Milliseconds a room without traffic stays in memory.
    #[serde(default = "default_muc_hibernate")]
    pub hibernate_timeout: u64,
}

/// One configuration field of MUC Light rooms.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MucLightField {
    /// The field's name (`roomname`, `subject`, …).
    pub field: String,
    /// Its value in a new room.
    #[serde(default)]
    pub string_value: String,
}

fn default_muc_light_host() -> String {
    "muclight.@HOST@".into()
}
fn default_muc_light_max_occupants() -> usize {
    10_000
}
fn default_muc_light_schema() -> Vec<MucLightField> {
    vec![
        MucLightField { field: "roomname".into(), string_value: "Untitled".into() },
        MucLightField { field: "subject".into(), string_value: String::new() },
    ]
}

impl Default for MucLightCfg {
    fn default() -> Self {
        MucLightCfg {
            host: default_muc_light_host(),
            equal_occupants: false,
            max_occupants: default_muc_light_max_occupants(),
            blocking: true,
            all_can_configure: false,
            all_can_invite: false,
            rooms_in_rosters: false,
            config_schema: default_muc_light_schema(),
            room_queue: default_muc_queue(),
            hibernate_timeout: default_muc_hibernate(),
        }
    }
}

/// `[modules.mod_muc]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MucCfg {
    /// The service's domain; `@HOST@` stands for each served host.
    #[serde(default = "default_muc_host")]
    pub host: String,
    /// Most occupants of any room (a room's own `max_users` is capped by it).
    #[serde(default = "default_muc_max_users")]
    pub max_users: usize,
    /// Most messages a room keeps for history on join (a room's own history
    /// length is capped by it).
    #[serde(default = "default_muc_history")]
    pub history_length: usize,
    /// Stanzas that may wait for one room; more get `resource-constraint`.
    #[serde(default = "default_muc_queue")]
    pub room_queue: usize,
    /// Milliseconds an empty persistent room stays in memory before it is
    /// stopped (it starts again from storage on the next stanza).
    #[serde(default = "default_muc_hibernate")]
    pub hibernate_timeout: u64,
    /// Rooms are archived (XEP-0313 on the room JID) when mod_mam is enabled too.
    #[serde(default = "default_true")]
    pub archive: bool,
    /// The configuration new rooms start with.
    #[serde(default)]
    pub default_room: DefaultRoomCfg,
}

/// `[modules.mod_muc.default_room]`: the configuration a new room starts with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultRoomCfg {
    /// Natural-language name.
    #[serde(default)]
    pub title: String,
    /// Short description.
    #[serde(default)]
    pub description: String,
    /// Occupants may change the subject (else moderators only).
    #[serde(default = "default_true")]
    pub allow_change_subj: bool,
    /// Occupants may send private messages (else moderators only).
    #[serde(default = "default_true")]
    pub allow_private_messages: bool,
    /// Listed in the service's disco#items.
    #[serde(default = "default_true")]
    pub public: bool,
    /// Kept in storage when empty and across restarts.
    #[serde(default)]
    pub persistent: bool,
    /// Only participants (not visitors) may speak.
    #[serde(default)]
    pub moderated: bool,
    /// New occupants of a moderated room are participants.
    #[serde(default = "default_true")]
    pub members_by_default: bool,
    /// Only members may enter.
    #[serde(default)]
    pub members_only: bool,
    /// Occupants may invite others (else admins and owners only).
    #[serde(default)]
    pub allow_user_invites: bool,
    /// Real JIDs are shown to every occupant (else to moderators only).
    #[serde(default)]
    pub non_anonymous: bool,
    /// Most occupants.
    #[serde(default = "default_muc_max_users")]
    pub max_users: usize,
    /// Messages kept for history on join.
    #[serde(default = "default_muc_history")]
    pub history_length: usize,
    /// Roles whose presence every occupant receives (`moderator`,
    /// `participant`, `visitor`); the others' only reaches themselves (large
    /// rooms: joining costs no presence to everyone).
    #[serde(default = "default_presence_broadcast")]
    pub presence_broadcast: Vec<String>,
}

fn default_presence_broadcast() -> Vec<String> {
    vec!["moderator".into(), "participant".into(), "visitor".into()]
}

fn default_muc_host() -> String {
    "conference.@HOST@".into()
}
fn default_muc_max_users() -> usize {
    200
}
fn default_muc_history() -> usize {
    20
}
fn default_muc_queue() -> usize {
    1000
}
fn default_muc_hibernate() -> u64 {
    90_000
}
fn default_true() -> bool {
    true
}

impl Default for DefaultRoomCfg {
    fn default() -> Self {
        DefaultRoomCfg {
            title: String::new(),
            description: String::new(),
            allow_change_subj: true,
            allow_private_messages: true,
            public: true,
            persistent: false,
            moderated: false,
            members_by_default: true,
            members_only: false,
            allow_user_invites: false,
            non_anonymous: false,
            max_users: default_muc_max_users(),
            history_length: default_muc_history(),
            presence_broadcast: default_presence_broadcast(),
        }
    }
}

impl Default for MucCfg {
    fn default() -> Self {
        MucCfg {
            host: default_muc_host(),
            max_users: default_muc_max_users(),
            history_length: default_muc_history(),
            room_queue: default_muc_queue(),
            hibernate_timeout: default_muc_hibernate(),
            archive: true,
            default_room: DefaultRoomCfg::default(),
        }
    }
}

/// `[modules.mod_mam]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MamCfg {
    /// Archiving mode of users who never set preferences: `always`, `roster` or `never`.
    #[serde(default = "default_mam_mode")]
    pub default_mode: String,
    /// Largest page a query may ask for; larger `<max/>` values are clamped to it.
    #[serde(default = "default_mam_max")]
    pub max_result_limit: usize,
    /// Page size of queries without `<max/>`.
    #[serde(default = "default_mam_page")]
    pub default_result_limit: usize,
    /// The background writer.
    #[serde(default)]
    pub async_writer: MamWriterCfg,
}

/// `[modules.mod_mam.async_writer]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MamWriterCfg {
    /// Rows waiting that start a write before `flush_interval`; a write takes
    /// every row waiting then, however many (group commit).
    #[serde(default = "default_mam_batch")]
    pub batch_size: usize,
    /// Milliseconds a row may wait for its batch to fill before it is written.
    #[serde(default = "default_mam_flush")]
    pub flush_interval: u64,
    /// Rows waiting to be written at which new archivable messages are refused
    /// (`resource-constraint`, type `wait`) until the writer catches up; rows of
    /// messages already accepted are still queued, so the queue may exceed it by
    /// what was in flight.
    #[serde(default = "default_mam_max_queue")]
    pub max_queue: usize,
}

fn default_mam_mode() -> String {
    "always".into()
}
fn default_mam_max() -> usize {
    50
}
fn default_mam_page() -> usize {
    50
}
/// MongooseIM's default is 30. Bigger batches share index pages: on SQLite
/// 3,000 cost about 15 % less server CPU per archived message than 300
/// (docs/benchmarks.md), and a row still waits at most `flush_interval`.
fn default_mam_batch() -> usize {
    3000
}
fn default_mam_flush() -> u64 {
    2000
}
fn default_mam_max_queue() -> usize {
    100_000
}

impl Default for MamWriterCfg {
    fn default() -> Self {
        MamWriterCfg {
            batch_size: default_mam_batch(),
            flush_interval: default_mam_flush(),
            max_queue: default_mam_max_queue(),
        }
    }
}

impl Default for MamCfg {
    fn default() -> Self {
        MamCfg {
            default_mode: default_mam_mode(),
            max_result_limit: default_mam_max(),
            default_result_limit: default_mam_page(),
            async_writer: MamWriterCfg::default(),
        }
    }
}

/// `[modules.mod_stream_management]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmCfg {
    /// Most stanzas sent and not yet acknowledged once the client has had
    /// `ack_timeout` to catch up; a client that stays beyond it without
    /// acknowledging anything, or goes beyond 100 × it, is disconnected with
    /// `resource-constraint`.
    #[serde(default = "default_sm_buffer")]
    pub buffer_max: usize,
    /// Seconds a client may stay beyond `buffer_max` without acknowledging
    /// anything (a burst, such as a room's occupant list, passes it for the
    /// round trip the client needs to acknowledge).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: u64,
    /// Ask for an acknowledgement after this many unacknowledged stanzas.
    #[serde(default = "default_ack_freq")]
    pub ack_freq: usize,
    /// Seconds a session waits, detached, for its client to resume it.
    #[serde(default = "default_resume_timeout")]
    pub resume_timeout: u64,
    /// Seconds the `h` of a timed-out session is remembered (MongooseIM's stale_h).
    #[serde(default = "default_stale_h")]
    pub stale_h_timeout: u64,
}

fn default_sm_buffer() -> usize {
    100
}
fn default_ack_timeout() -> u64 {
    30
}
fn default_ack_freq() -> usize {
    1
}
fn default_resume_timeout() -> u64 {
    600
}
fn default_stale_h() -> u64 {
    3600
}

impl Default for SmCfg {
    fn default() -> Self {
        SmCfg {
            buffer_max: default_sm_buffer(),
            ack_timeout: default_ack_timeout(),
            ack_freq: default_ack_freq(),
            resume_timeout: default_resume_timeout(),
            stale_h_timeout: default_stale_h(),
        }
    }
}

/// `[modules.mod_csi]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsiCfg {
    /// Most stanzas held back for an inactive client before they are all sent.
    #[serde(default = "default_csi_buffer")]
    pub buffer_max: usize,
}

fn default_csi_buffer() -> usize {
    100
}

impl Default for CsiCfg {
    fn default() -> Self {
        CsiCfg { buffer_max: default_csi_buffer() }
    }
}

impl Modules {
    /// What the built-in configuration enables: everything but registration.
    pub fn all_default() -> Self {
        Modules {
            mod_roster: Some(RosterCfg::default()),
            mod_disco: Some(DiscoCfg::default()),
            mod_ping: Some(PingCfg::default()),
            mod_version: Some(VersionCfg::default()),
            mod_time: Some(Empty {}),
            mod_last: Some(Empty {}),
            mod_vcard: Some(VcardCfg::default()),
            mod_private: Some(PrivateCfg::default()),
            mod_blocking: Some(Empty {}),
            mod_offline: Some(OfflineCfg::default()),
            mod_register: None,
            mod_stanza_id: Some(Empty {}),
            mod_carboncopy: Some(Empty {}),
            mod_csi: Some(CsiCfg::default()),
            mod_stream_management: Some(SmCfg::default()),
            mod_mam: Some(MamCfg::default()),
            mod_muc: Some(MucCfg::default()),
            mod_muc_light: Some(MucLightCfg::default()),
        }
    }

    pub(crate) fn validate(&self, report: &mut Report<'_>) {
        if let Some(m) = &self.mod_muc_light {
            check_service_host(&m.host, "modules.mod_muc_light.host", "muclight.@HOST@", report);
            if m.max_occupants < 2 {
                report(None, "modules.mod_muc_light.max_occupants".into(), "must be at least 2".into());
            }
            if m.room_queue == 0 {
                report(None, "modules.mod_muc_light.room_queue".into(), "must be at least 1".into());
            }
            let mut seen = std::collections::HashSet::new();
            for f in &m.config_schema {
                if f.field.is_empty()
                    || f.field == "version"
                    || f.field == "prev-version"
                    || !seen.insert(f.field.as_str())
                {
                    report(
                        None,
                        "modules.mod_muc_light.config_schema".into(),
                        format!("field {:?} is empty, reserved (version, prev-version) or repeated", f.field),
                    );
                }
            }
        }
        if let (Some(a), Some(b)) = (&self.mod_muc, &self.mod_muc_light) {
            if a.host == b.host {
                report(None, "modules.mod_muc_light.host".into(), "must differ from modules.mod_muc.host".into());
            }
        }
        if let Some(m) = &self.mod_muc {
            check_service_host(&m.host, "modules.mod_muc.host", "conference.@HOST@", report);
            if let Some(r) = m
                .default_room
                .presence_broadcast
                .iter()
                .find(|r| !["moderator", "participant", "visitor"].contains(&r.as_str()))
            {
                report(
                    None,
                    "modules.mod_muc.default_room.presence_broadcast".into(),
                    format!("{r:?} is not a role (moderator, participant, visitor)"),
                );
            }
            for (key, v) in [
                ("max_users", m.max_users),
                ("room_queue", m.room_queue),
                ("default_room.max_users", m.default_room.max_users),
            ] {
                if v == 0 {
                    report(None, format!("modules.mod_muc.{key}"), "must be at least 1".into());
                }
            }
        }
        if let Some(p) = &self.mod_ping {
            if p.ping_interval == 0 {
                report(None, "modules.mod_ping.ping_interval".into(), "must be at least 1 second".into());
            }
            if p.ping_req_timeout == 0 {
                report(None, "modules.mod_ping.ping_req_timeout".into(), "must be at least 1 second".into());
            }
        }
        if let Some(s) = &self.mod_stream_management {
            if s.buffer_max == 0 || s.ack_freq == 0 || s.resume_timeout == 0 || s.ack_timeout == 0 {
                report(
                    None,
                    "modules.mod_stream_management".into(),
                    "buffer_max, ack_freq, ack_timeout and resume_timeout must be at least 1".into(),
                );
            }
        }
        if let Some(o) = &self.mod_offline {
            if o.max_messages == 0 {
                report(None, "modules.mod_offline.max_messages".into(), "must be at least 1".into());
            }
        }
        if let Some(m) = &self.mod_mam {
            if !matches!(m.default_mode.as_str(), "always" | "roster" | "never") {
                report(
                    None,
                    "modules.mod_mam.default_mode".into(),
                    "must be \"always\", \"roster\" or \"never\"".into(),
                );
            }
            if m.max_result_limit == 0 || m.default_result_limit == 0 || m.default_result_limit > m.max_result_limit {
                report(
                    None,
                    "modules.mod_mam".into(),
                    "default_result_limit must be between 1 and max_result_limit".into(),
                );
            }
            if m.async_writer.batch_size == 0 || m.async_writer.flush_interval == 0 {
                report(
                    None,
                    "modules.mod_mam.async_writer".into(),
                    "batch_size and flush_interval must be at least 1".into(),
                );
            }
            if m.async_writer.max_queue < m.async_writer.batch_size.max(1) {
                report(
                    None,
                    "modules.mod_mam.async_writer.max_queue".into(),
                    format!(
                        "is {} but must be at least batch_size ({}; the default is {}): raise max_queue or lower batch_size",
                        m.async_writer.max_queue,
                        m.async_writer.batch_size,
                        default_mam_batch()
                    ),
                );
            }
        }
        if let Some(r) = &self.mod_roster {
            if r.max_roster_size == 0 {
                report(None, "modules.mod_roster.max_roster_size".into(), "must be at least 1".into());
            }
        }
    }
}

/// A module without options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A service's domain template (`@HOST@` stands for each served host) must make
/// a domain.
fn check_service_host(host: &str, key: &str, example: &str, report: &mut Report<'_>) {
    let host = host.replace("@HOST@", "example.org");
    if host.is_empty() || host.contains(['@', '/', ' ']) || !host.contains('.') {
        report(None, key.into(), format!("must be a domain such as \"{example}\""));
    }
}

/// `[modules.mod_roster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterCfg {
    /// Roster versioning (XEP-0237).
    #[serde(default = "yes")]
    pub versioning: bool,
    /// Most items a roster may hold.
    #[serde(default = "default_roster_size")]
    pub max_roster_size: usize,
}

fn yes() -> bool {
    true
}
fn default_roster_size() -> usize {
    2000
}

impl Default for RosterCfg {
    fn default() -> Self {
        RosterCfg { versioning: true, max_roster_size: default_roster_size() }
    }
}

/// `[modules.mod_disco]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoCfg {
    /// XEP-0157 contact addresses, e.g. `{ name = "abuse-addresses", urls = ["mailto:abuse@example.com"] }`.
    #[serde(default)]
    pub server_info: Vec<ServerInfo>,
}

/// One XEP-0157 field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    /// Field name (`abuse-addresses`, `admin-addresses`, `support-addresses`, …).
    pub name: String,
    /// Addresses.
    pub urls: Vec<String>,
}

/// `[modules.mod_ping]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingCfg {
    /// Ping clients that have been silent for `ping_interval` seconds.
    #[serde(default = "yes")]
    pub send_pings: bool,
    /// Seconds of silence before a ping.
    #[serde(default = "default_ping_interval")]
    pub ping_interval: u64,
    /// Seconds to wait for the answer.
    #[serde(default = "default_ping_timeout")]
    pub ping_req_timeout: u64,
    /// `kill` closes a connection that did not answer; `none` only logs.
    #[serde(default)]
    pub timeout_action: TimeoutAction,
}

fn default_ping_interval() -> u64 {
    60
}
fn default_ping_timeout() -> u64 {
    32
}

impl Default for PingCfg {
    fn default() -> Self {
        PingCfg {
            send_pings: true,
            ping_interval: default_ping_interval(),
            ping_req_timeout: default_ping_timeout(),
            timeout_action: TimeoutAction::Kill,
        }
    }
}

/// What to do with a client that does not answer a server ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    /// Close the connection.
    #[default]
    Kill,
    /// Log only.
    None,
}

/// `[modules.mod_version]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionCfg {
    /// Include the operating system in the answer.
    #[serde(default)]
    pub os_info: bool,
}

/// `[modules.mod_vcard]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcardCfg {
    /// Largest vCard in bytes.
    #[serde(default = "default_vcard_size")]
    pub max_size: usize,
}

fn default_vcard_size() -> usize {
    65536
}

impl Default for VcardCfg {
    fn default() -> Self {
        VcardCfg { max_size: default_vcard_size() }
    }
}

/// `[modules.mod_private]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateCfg {
    /// Largest stored element in bytes.
    #[serde(default = "default_vcard_size")]
    pub max_size: usize,
}

impl Default for PrivateCfg {
    fn default() -> Self {
        PrivateCfg { max_size: default_vcard_size() }
    }
}

/// `[modules.mod_offline]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineCfg {
    /// Most messages stored per user; beyond it senders get `service-unavailable`.
    #[serde(default = "default_offline_max")]
    pub max_messages: usize,
}

fn default_offline_max() -> usize {
    1000
}

impl Default for OfflineCfg {
    fn default() -> Self {
        OfflineCfg { max_messages: default_offline_max() }
    }
}

/// `[modules.mod_register]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterCfg {
    /// Shortest password accepted.
    #[serde(default = "default_min_password")]
    pub min_password_length: usize,
    /// Seconds one IP address must wait between two registrations.
    #[serde(default = "default_reg_interval")]
    pub registration_interval: u64,
    /// Allow authenticated users to change their password (XEP-0077 §3.3).
    #[serde(default = "yes")]
    pub allow_password_change: bool,
    /// Allow authenticated users to delete their account (XEP-0077 §3.2).
    #[serde(default = "yes")]
    pub allow_unregister: bool,
}

fn default_min_password() -> usize {
    8
}
fn default_reg_interval() -> u64 {
    60
}

impl Default for RegisterCfg {
    fn default() -> Self {
        RegisterCfg {
            min_password_length: default_min_password(),
            registration_interval: default_reg_interval(),
            allow_password_change: true,
            allow_unregister: true,
        }
    }
}
