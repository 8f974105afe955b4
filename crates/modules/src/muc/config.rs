//! A room's configuration: what the owner sets with the XEP-0045 §10.2
//! `muc#roomconfig` form, how it is stored (an element the storage layer keeps
//! as opaque text), and the `muc#roominfo` form of disco#info (§6.4).

use meerkat_config::DefaultRoomCfg;
use meerkat_stanza::{ns, StanzaError};
use meerkat_xml::{Element, Limits};

/// The stored form's namespace (Meerkat's own).
const NS_STORED: &str = "urn:meerkat:muc:room";
/// XEP-0045 §10.2 form type.
pub(crate) const NS_ROOMCONFIG: &str = "http://jabber.org/protocol/muc#roomconfig";
/// XEP-0045 §6.4 form type.
pub(crate) const NS_ROOMINFO: &str = "http://jabber.org/protocol/muc#roominfo";

/// Who may send private messages to occupants (`muc#roomconfig_allowpm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    None,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::None => "none",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::None,
            _ => return None,
        })
    }
}

/// A room's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// Empty = no password.
    pub password: String,
    pub max_users: usize,
    /// Real JIDs visible to everyone (`whois = anyone`), else to moderators.
    pub non_anonymous: bool,
    pub history_length: usize,
    pub allow_invites: bool,
    pub change_subject: bool,
    pub allow_pm: AllowPm,
    /// New occupants of a moderated room get a voice.
    pub members_by_default: bool,
    /// Roles whose presence is broadcast (`muc#roomconfig_presencebroadcast`),
    /// as bits: 1 moderator, 2 participant, 4 visitor.
    pub presence_broadcast: u8,
    /// Salt of the room's XEP-0421 occupant ids (kept, so ids stay stable).
    pub occupant_salt: String,
    /// The subject, who set it (occupant JID) and when (XEP-0082).
    pub subject: String,
    pub subject_by: String,
}

impl RoomConfig {
    /// A new room's configuration from `[modules.mod_muc.default_room]`.
    pub(crate) fn from_defaults(d: &DefaultRoomCfg, max_users: usize, max_history: usize) -> Self {
        RoomConfig {
            name: d.title.clone(),
            description: d.description.clone(),
            persistent: d.persistent,
            public: d.public,
            members_only: d.members_only,
            moderated: d.moderated,
            password: String::new(),
            max_users: d.max_users.min(max_users),
            non_anonymous: d.non_anonymous,
            history_length: d.history_length.min(max_history),
            allow_invites: d.allow_user_invites,
            change_subject: d.allow_change_subj,
            allow_pm: if d.allow_private_messages { AllowPm::Anyone } else { AllowPm::Moderators },
            members_by_default: d.members_by_default,
            presence_broadcast: role_bits(d.presence_broadcast.iter().map(String::as_str)),
            occupant_salt: meerkat_core::util::random_id(16),
            subject: String::new(),
            subject_by: String::new(),
        }
    }

    /// The stored text.
    pub(crate) fn to_stored(&self) -> String {
        let b = |v: bool| if v { "1" } else { "0" };
        Element::builder("room", NS_STORED)
            .attr("name", self.name.as_str())
            .attr("description", self.description.as_str())
            .attr("persistent", b(self.persistent))
            .attr("public", b(self.public))
            .attr("members_only", b(self.members_only))
            .attr("moderated", b(self.moderated))
            .attr("password", self.password.as_str())
            .attr("max_users", self.max_users.to_string())
            .attr("non_anonymous", b(self.non_anonymous))
            .attr("history_length", self.history_length.to_string())
            .attr("allow_invites", b(self.allow_invites))
            .attr("change_subject", b(self.change_subject))
            .attr("allow_pm", self.allow_pm.as_str())
            .attr("members_by_default", b(self.members_by_default))
            .attr("presence_broadcast", self.presence_broadcast.to_string())
            .attr("occupant_salt", self.occupant_salt.as_str())
            .attr("subject", self.subject.as_str())
            .attr("subject_by", self.subject_by.as_str())
            .build()
            .to_string_with_ns()
    }

    /// Reads stored text; a missing attribute takes the default's value, so
    /// rooms stored by an older version still load.
    pub(crate) fn from_stored(s: &str, defaults: &RoomConfig) -> Result<Self, String> {
        let el = meerkat_xml::parse_element(s, &Limits::default()).map_err(|e| e.to_string())?;
        if !el.is("room", NS_STORED) {
            return Err(format!("expected <room xmlns='{NS_STORED}'/>"));
        }
        let text = |k: &str, d: &str| el.attr(k).unwrap_or(d).to_owned();
        let flag = |k: &str, d: bool| el.attr(k).map_or(d, |v| v == "1");
        let num = |k: &str, d: usize| el.attr(k).and_then(|v| v.parse().ok()).unwrap_or(d);
        Ok(RoomConfig {
            name: text("name", &defaults.name),
            description: text("description", &defaults.description),
            persistent: flag("persistent", true),
            public: flag("public", defaults.public),
            members_only: flag("members_only", defaults.members_only),
            moderated: flag("moderated", defaults.moderated),
            password: text("password", ""),
            max_users: num("max_users", defaults.max_users),
            non_anonymous: flag("non_anonymous", defaults.non_anonymous),
            history_length: num("history_length", defaults.history_length),
            allow_invites: flag("allow_invites", defaults.allow_invites),
            change_subject: flag("change_subject", defaults.change_subject),
            allow_pm: el.attr("allow_pm").and_then(AllowPm::parse).unwrap_or(defaults.allow_pm),
            members_by_default: flag("members_by_default", defaults.members_by_default),
            presence_broadcast: el
                .attr("presence_broadcast")
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.presence_broadcast),
            occupant_salt: text("occupant_salt", &defaults.occupant_salt),
            subject: text("subject", ""),
            subject_by: text("subject_by", ""),
        })
    }

    /// XEP-0045 §10.2: the configuration form (`type='form'`), with the room's
    /// owners and admins.
    pub(crate) fn form(&self, owners: &[String], admins: &[String], max_users: usize) -> Element {
        let mut x = Element::builder("x", ns::DATA_FORMS).attr("type", "form").build();
        x.append_child(Element::builder("title", ns::DATA_FORMS).text("Room configuration").build());
        x.append_child(hidden("FORM_TYPE", NS_ROOMCONFIG));
        x.append_child(field("muc#roomconfig_roomname", "text-single", "Natural-language room name", &[&self.name]));
        x.append_child(field("muc#roomconfig_roomdesc", "text-single", "Short description", &[&self.description]));
        x.append_child(boolean("muc#roomconfig_persistentroom", "Make room persistent", self.persistent));
        x.append_child(boolean("muc#roomconfig_publicroom", "Make room publicly searchable", self.public));
        x.append_child(boolean("muc#roomconfig_membersonly", "Make room members-only", self.members_only));
        x.append_child(boolean("muc#roomconfig_moderatedroom", "Make room moderated", self.moderated));
        x.append_child(boolean(
            "muc#roomconfig_passwordprotectedroom",
            "Password required to enter",
            !self.password.is_empty(),
        ));
        x.append_child(field("muc#roomconfig_roomsecret", "text-private", "Password", &[&self.password]));
        let mut maxusers = field(
            "muc#roomconfig_maxusers",
            "list-single",
            "Maximum number of occupants",
            &[&self.max_users.to_string()],
        );
        for n in [10, 20, 30, 50, 100, 200, 500, 1000, 5000, 10000].into_iter().filter(|n| *n <= max_users) {
            maxusers.append_child(option(&n.to_string()));
        }
        if ![10, 20, 30, 50, 100, 200, 500, 1000, 5000, 10000].contains(&max_users) {
            maxusers.append_child(option(&max_users.to_string()));
        }
        x.append_child(maxusers);
        let mut whois = field(
            "muc#roomconfig_whois",
            "list-single",
            "Who may discover real JIDs",
            &[if self.non_anonymous { "anyone" } else { "moderators" }],
        );
        whois.append_child(option("moderators"));
        whois.append_child(option("anyone"));
        x.append_child(whois);
        x.append_child(field(
            "muc#roomconfig_historylength",
            "text-single",
            "Messages of history sent to new occupants",
            &[&self.history_length.to_string()],
        ));
        x.append_child(boolean("muc#roomconfig_allowinvites", "Allow occupants to invite others", self.allow_invites));
        x.append_child(boolean(
            "muc#roomconfig_changesubject",
            "Allow occupants to change the subject",
            self.change_subject,
        ));
        let mut pm =
            field("muc#roomconfig_allowpm", "list-single", "Who may send private messages", &[self.allow_pm.as_str()]);
        for o in ["anyone", "participants", "moderators", "none"] {
            pm.append_child(option(o));
        }
        x.append_child(pm);
        x.append_child(boolean(
            "muc#roomconfig_members_by_default",
            "New occupants of a moderated room may speak",
            self.members_by_default,
        ));
        let broadcast: Vec<&str> =
            ROLES.iter().filter(|(_, bit)| self.presence_broadcast & bit != 0).map(|(r, _)| *r).collect();
        let mut pb =
            field("muc#roomconfig_presencebroadcast", "list-multi", "Roles whose presence is broadcast", &broadcast);
        for (r, _) in ROLES {
            pb.append_child(option(r));
        }
        x.append_child(pb);
        let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
        let admins: Vec<&str> = admins.iter().map(String::as_str).collect();
        x.append_child(field("muc#roomconfig_roomowners", "jid-multi", "Room owners", &owners));
        x.append_child(field("muc#roomconfig_roomadmins", "jid-multi", "Room admins", &admins));
        x
    }

    /// Applies a submitted form (`type='submit'`); fields not in the form keep
    /// their values. Returns the owner and admin lists when the form sets them.
    pub(crate) fn apply_form(
        &mut self,
        x: &Element,
        max_users: usize,
        max_history: usize,
    ) -> Result<FormLists, StanzaError> {
        let bad = |what: &str| StanzaError::bad_request(what).with_type(meerkat_stanza::ErrorType::Modify);
        if let Some(ft) = form_value(x, "FORM_TYPE") {
            if ft != NS_ROOMCONFIG {
                return Err(bad("FORM_TYPE must be http://jabber.org/protocol/muc#roomconfig"));
            }
        }
        let mut next = self.clone();
        let mut lists = FormLists::default();
        let mut password_protected = None;
        for f in x.children().filter(|f| f.is("field", ns::DATA_FORMS)) {
            let Some(var) = f.attr("var") else { continue };
            let values: Vec<String> =
                f.children().filter(|v| v.is("value", ns::DATA_FORMS)).map(|v| v.text()).collect();
            let one = values.first().map(String::as_str).unwrap_or("");
            let boolean = || match one {
                "1" | "true" => Ok(true),
                "0" | "false" | "" => Ok(false),
                _ => Err(bad(&format!("{var} must be a boolean"))),
            };
            match var {
                "FORM_TYPE" => {}
                "muc#roomconfig_roomname" => next.name = one.to_owned(),
                "muc#roomconfig_roomdesc" => next.description = one.to_owned(),
                "muc#roomconfig_persistentroom" => next.persistent = boolean()?,
                "muc#roomconfig_publicroom" => next.public = boolean()?,
                "muc#roomconfig_membersonly" => next.members_only = boolean()?,
                "muc#roomconfig_moderatedroom" => next.moderated = boolean()?,
                "muc#roomconfig_passwordprotectedroom" => password_protected = Some(boolean()?),
                "muc#roomconfig_roomsecret" => next.password = one.to_owned(),
                "muc#roomconfig_maxusers" => {
                    let n: usize = match one {
                        "" | "none" => max_users,
                        v => v.parse().map_err(|_| bad("muc#roomconfig_maxusers must be a number"))?,
                    };
                    if n == 0 || n > max_users {
                        return Err(bad(&format!("muc#roomconfig_maxusers must be between 1 and {max_users}")));
                    }
                    next.max_users = n;
                }
                "muc#roomconfig_whois" => {
                    next.non_anonymous = match one {
                        "anyone" => true,
                        "moderators" => false,
                        _ => return Err(bad("muc#roomconfig_whois must be moderators or anyone")),
                    }
                }
                "muc#roomconfig_historylength" | "muc#maxhistoryfetch" => {
                    let n: usize = one.parse().map_err(|_| bad(&format!("{var} must be a number")))?;
                    next.history_length = n.min(max_history);
                }
                "muc#roomconfig_allowinvites" => next.allow_invites = boolean()?,
                "muc#roomconfig_changesubject" => next.change_subject = boolean()?,
                "muc#roomconfig_allowpm" => {
                    next.allow_pm =
                        AllowPm::parse(one).ok_or_else(|| bad("muc#roomconfig_allowpm is not a known value"))?
                }
                "muc#roomconfig_members_by_default" => next.members_by_default = boolean()?,
                "muc#roomconfig_presencebroadcast" => {
                    if let Some(v) = values.iter().find(|v| !ROLES.iter().any(|(r, _)| r == v)) {
                        return Err(bad(&format!("{v} is not a role")));
                    }
                    next.presence_broadcast = role_bits(values.iter().map(String::as_str));
                }
                "muc#roomconfig_roomowners" => lists.owners = Some(values),
                "muc#roomconfig_roomadmins" => lists.admins = Some(values),
                // XEP-0004 §3.2: a form processor ignores fields it does not know.
                _ => {}
            }
        }
        match password_protected {
            Some(false) => next.password.clear(),
            Some(true) if next.password.is_empty() => {
                return Err(bad("a password-protected room needs muc#roomconfig_roomsecret"))
            }
            _ => {}
        }
        *self = next;
        Ok(lists)
    }
}

/// The roles of `muc#roomconfig_presencebroadcast` and their bits.
const ROLES: [(&str, u8); 3] = [("moderator", 1), ("participant", 2), ("visitor", 4)];

/// The bits of a list of role names (unknown names count for nothing).
fn role_bits<'a>(roles: impl Iterator<Item = &'a str>) -> u8 {
    roles.filter_map(|r| ROLES.iter().find(|(n, _)| *n == r).map(|(_, b)| *b)).fold(0, |a, b| a | b)
}

/// Owner and admin lists set through the configuration form.
#[derive(Debug, Default)]
pub(crate) struct FormLists {
    pub owners: Option<Vec<String>>,
    pub admins: Option<Vec<String>>,
}

/// The value of a form field.
pub(crate) fn form_value(x: &Element, var: &str) -> Option<String> {
    x.children()
        .find(|f| f.is("field", ns::DATA_FORMS) && f.attr("var") == Some(var))
        .and_then(|f| f.child_text("value", ns::DATA_FORMS))
}

fn hidden(var: &str, value: &str) -> Element {
    Element::builder("field", ns::DATA_FORMS)
        .attr("var", var)
        .attr("type", "hidden")
        .append(Element::builder("value", ns::DATA_FORMS).text(value).build())
        .build()
}

fn field(var: &str, ty: &str, label: &str, values: &[&str]) -> Element {
    let mut f =
        Element::builder("field", ns::DATA_FORMS).attr("var", var).attr("type", ty).attr("label", label).build();
    for v in values {
        f.append_child(Element::builder("value", ns::DATA_FORMS).text(*v).build());
    }
    f
}

fn boolean(var: &str, label: &str, v: bool) -> Element {
    field(var, "boolean", label, &[if v { "1" } else { "0" }])
}

fn option(v: &str) -> Element {
    Element::builder("option", ns::DATA_FORMS)
        .attr("label", v)
        .append(Element::builder("value", ns::DATA_FORMS).text(v).build())
        .build()
}

/// XEP-0045 §6.4: the `muc#roominfo` form of a room's disco#info.
pub(crate) fn roominfo(cfg: &RoomConfig, occupants: usize) -> Element {
    let mut x = Element::builder("x", ns::DATA_FORMS).attr("type", "result").build();
    x.append_child(hidden("FORM_TYPE", NS_ROOMINFO));
    x.append_child(field("muc#roominfo_description", "text-single", "Description", &[&cfg.description]));
    x.append_child(field("muc#roominfo_subject", "text-single", "Subject", &[&cfg.subject]));
    x.append_child(field("muc#roominfo_occupants", "text-single", "Number of occupants", &[&occupants.to_string()]));
    x.append_child(field(
        "muc#roominfo_subjectmod",
        "boolean",
        "Only moderators may change the subject",
        &[if cfg.change_subject { "0" } else { "1" }],
    ));
    x.append_child(field("muc#maxhistoryfetch", "text-single", "History length", &[&cfg.history_length.to_string()]));
    x.append_child(field(
        "muc#roomconfig_whois",
        "list-single",
        "Who may discover real JIDs",
        &[if cfg.non_anonymous { "anyone" } else { "moderators" }],
    ));
    x.append_child(field(
        "muc#roomconfig_allowinvites",
        "boolean",
        "Occupants may invite",
        &[if cfg.allow_invites { "1" } else { "0" }],
    ));
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> RoomConfig {
        RoomConfig::from_defaults(&DefaultRoomCfg::default(), 200, 20)
    }

    #[test]
    fn stored_round_trip() {
        let mut c = defaults();
        c.name = "Tea & <biscuits>".into();
        c.password = "secret".into();
        c.allow_pm = AllowPm::Participants;
        c.subject = "agenda".into();
        let back = RoomConfig::from_stored(&c.to_stored(), &defaults()).unwrap();
        assert_eq!(back, c);
        assert!(RoomConfig::from_stored("<other xmlns='x'/>", &defaults()).is_err());
    }

    #[test]
    fn form_submission() {
        let mut c = defaults();
        let submit = meerkat_xml::parse_element(
            "<x xmlns='jabber:x:data' type='submit'>\
               <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
               <field var='muc#roomconfig_roomname'><value>Lobby</value></field>\
               <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
               <field var='muc#roomconfig_membersonly'><value>true</value></field>\
               <field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field>\
               <field var='muc#roomconfig_roomsecret'><value>pw</value></field>\
               <field var='muc#roomconfig_maxusers'><value>50</value></field>\
               <field var='muc#roomconfig_whois'><value>anyone</value></field>\
               <field var='muc#roomconfig_roomadmins'><value>a@x</value><value>b@x</value></field>\
               <field var='x-unknown'><value>ignored</value></field>\
             </x>",
            &Limits::default(),
        )
        .unwrap();
        let lists = c.apply_form(&submit, 200, 20).unwrap();
        assert_eq!((c.name.as_str(), c.persistent, c.members_only), ("Lobby", true, true));
        assert_eq!((c.password.as_str(), c.max_users, c.non_anonymous), ("pw", 50, true));
        assert_eq!(lists.admins, Some(vec!["a@x".to_owned(), "b@x".to_owned()]));
        assert!(lists.owners.is_none());
        // Errors leave the configuration unchanged.
        let before = c.clone();
        for bad in [
            "<field var='muc#roomconfig_maxusers'><value>100000</value></field>",
            "<field var='muc#roomconfig_persistentroom'><value>maybe</value></field>",
            "<field var='muc#roomconfig_whois'><value>everyone</value></field>",
            "<field var='FORM_TYPE'><value>urn:other</value></field>",
        ] {
            let x = meerkat_xml::parse_element(
                &format!("<x xmlns='jabber:x:data' type='submit'>{bad}</x>"),
                &Limits::default(),
            )
            .unwrap();
            assert!(c.apply_form(&x, 200, 20).is_err(), "{bad}");
            assert_eq!(c, before);
        }
    }
}
