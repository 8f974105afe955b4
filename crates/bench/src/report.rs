//! What a worker measures (sent to the parent as one JSON line on stdout) and how the
//! parent merges the workers' results.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hist::Hist;
use crate::login::{LoginError, Phase, PhaseTimes};

/// Phase names, indexed like [`Phase`].
pub const PHASES: [Phase; 5] = [Phase::Connect, Phase::Tls, Phase::Auth, Phase::Bind, Phase::Roster];

/// The counters and histograms of one worker (or, merged, of the run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Simulated users handled.
    pub users: u64,
    /// Logins started.
    pub login_attempts: u64,
    /// Logins that reached the roster result.
    pub logins: u64,
    /// Failed logins by "phase: reason".
    pub login_failures: BTreeMap<String, u64>,
    /// Logins completed after the measured phase had started.
    pub late_logins: u64,
    /// Unix µs of the earliest login start (0: none).
    pub first_login_start_us: u64,
    /// Unix µs of the latest login completion (0: none).
    pub last_login_end_us: u64,
    /// Time to session (µs).
    pub login: Hist,
    /// Per-phase durations (µs), indexed like [`PHASES`].
    pub phases: Vec<Hist>,
    /// Messages written to the socket.
    pub sent: u64,
    /// Messages received from this run, first copy only.
    pub delivered: u64,
    /// Extra copies of already received messages.
    pub duplicated: u64,
    /// Bench messages from another run (offline storage) or from outside the bucket.
    pub stale: u64,
    /// Bench messages bounced with type='error'.
    pub errors: u64,
    /// Sessions that ended before the end of the run, by reason.
    pub disconnects: BTreeMap<String, u64>,
    /// Time to delivery (µs): receive time minus scheduled send time.
    pub ttd: Hist,
    /// Sender lateness (µs): actual send time minus scheduled send time.
    pub late: Hist,
    /// register: accounts created.
    pub registered: u64,
    /// register: accounts that already existed.
    pub existed: u64,
    /// PBKDF2 derivations computed (SCRAM key cache misses).
    pub scram_derivations: u64,
    /// The worker process's own CPU time (user + system), ms.
    pub generator_cpu_ms: u64,
    /// The worker process's peak RSS, KiB.
    pub generator_rss_kib: u64,
    /// presence, sm-resume, mam: the scenario-specific counters.
    #[serde(default)]
    pub extra: Extra,
}

/// Counters of the presence, sm-resume and mam scenarios (zero elsewhere).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Extra {
    /// presence: updates lost, from gaps in each sender's update counter as seen by
    /// each online contact (and at the end of the run, from each sender's final count).
    pub presence_lost: u64,
    /// presence: final stamps (sender's total) that did not reach a contact online
    /// since before the end of the measured phase.
    pub finals_missing: u64,
    /// presence: stamped updates received as the server's answer to a probe (their
    /// sender's current presence when the receiver logged in): not in TTD.
    pub presence_replayed: u64,
    /// presence: scheduled updates not sent because the sender was logged out (churn).
    pub presence_skipped: u64,
    /// presence: available presence without a stamp received (contacts logging in).
    pub available_rx: u64,
    /// presence: unavailable presence received (contacts logging out).
    pub unavailable_rx: u64,
    /// presence: subscription requests sent during the setup phase.
    pub subscribe_sent: u64,
    /// presence: roster items removed at setup (benchmark users that are not contacts).
    pub roster_removed: u64,
    /// presence: from the start of the setup phase until the user's roster was at
    /// `both` with every contact (µs), for the users that got there; muc-light: until
    /// each room was created; muc: until each join was complete.
    pub setup: Hist,
    /// presence: users whose roster had not reached `both` with every contact when
    /// the measured phase started; muc-light, muc: users with a room not ready (or,
    /// muc, not joined) then.
    pub setup_incomplete: u64,
    /// presence: logouts by churn.
    pub churn_logouts: u64,
    /// presence: logins after a churn logout.
    pub churn_logins: u64,
    /// presence: time to session of the logins after a churn logout (µs).
    pub churn_login: Hist,
    /// sm-resume: connections cut abruptly.
    pub cuts: u64,
    /// sm-resume: sessions resumed (`<resumed/>`).
    pub resumes_ok: u64,
    /// sm-resume: resumptions that failed, by reason.
    pub resume_failures: BTreeMap<String, u64>,
    /// sm-resume: from the cut to `<resumed/>` (µs): TCP, TLS, SASL and resume.
    pub resume: Hist,
    /// sm-resume: messages the clients sent again after a resume (not acknowledged
    /// by the server before the cut).
    pub resent: u64,
    /// sm-resume: acknowledgements from the server with an impossible `h`.
    pub bad_acks: u64,
    /// mam: queries of the pass through the archives (not measured).
    pub archive_queries: u64,
    /// mam: archived messages of this run seen in that pass.
    pub archive_checked: u64,
    /// mam: messages the users sent and received in this run, for the archives
    /// paged through to their end.
    pub archive_expected: u64,
    /// mam: of those, messages not in the archive.
    pub archive_missing: u64,
    /// mam: results in the run's part of an archive that are no message of this run
    /// between the pair, a second copy, or out of id order.
    pub archive_foreign: u64,
    /// mam: users whose archive holds less than --page pages from this run.
    pub archive_short: u64,
    /// mam: users whose pass had not reached the end of the archive when the lookups
    /// started (or at all).
    pub archive_unchecked: u64,
    /// mam: lookups sent.
    pub lookups_sent: u64,
    /// mam: lookups answered with exactly the expected ids, in order.
    pub lookups_ok: u64,
    /// mam: lookups that failed, by reason.
    pub lookup_failures: BTreeMap<String, u64>,
    /// mam: lookups not sent because the user's pass had not yet found the page.
    pub lookups_skipped: u64,
    /// mam: `<result/>` messages received for the lookups.
    pub lookup_results: u64,
    /// mam: lookup latency (µs), from the scheduled send to the `<fin/>`.
    pub lookup: Hist,
    /// muc-light, muc: rooms created in the setup (muc: configured by their creator).
    pub rooms_created: u64,
    /// muc-light: rooms that existed already (`conflict`, same name and occupants).
    pub rooms_existed: u64,
    /// muc-light, muc: rooms ready in time or not: created, existing, or (muc) joined
    /// by their creator and unlocked.
    pub rooms_ready: u64,
    /// muc-light, muc: rooms that could not be created, configured or joined, by reason.
    pub room_failures: BTreeMap<String, u64>,
    /// muc: joins completed (own presence, then the subject).
    pub joins_ok: u64,
    /// muc: joins sent again because the room was still locked (`item-not-found`).
    pub join_retries: u64,
    /// muc: other occupants' available presence received (the joins' broadcasts).
    pub room_presence_rx: u64,
}

impl Extra {
    fn merge(&mut self, o: &Extra) {
        self.presence_lost += o.presence_lost;
        self.presence_replayed += o.presence_replayed;
        self.finals_missing += o.finals_missing;
        self.presence_skipped += o.presence_skipped;
        self.available_rx += o.available_rx;
        self.unavailable_rx += o.unavailable_rx;
        self.subscribe_sent += o.subscribe_sent;
        self.roster_removed += o.roster_removed;
        self.setup.merge(&o.setup);
        self.setup_incomplete += o.setup_incomplete;
        self.churn_logouts += o.churn_logouts;
        self.churn_logins += o.churn_logins;
        self.churn_login.merge(&o.churn_login);
        self.cuts += o.cuts;
        self.resumes_ok += o.resumes_ok;
        for (k, v) in &o.resume_failures {
            *self.resume_failures.entry(k.clone()).or_default() += v;
        }
        self.resume.merge(&o.resume);
        self.resent += o.resent;
        self.bad_acks += o.bad_acks;
        self.archive_queries += o.archive_queries;
        self.archive_checked += o.archive_checked;
        self.archive_expected += o.archive_expected;
        self.archive_missing += o.archive_missing;
        self.archive_foreign += o.archive_foreign;
        self.archive_short += o.archive_short;
        self.archive_unchecked += o.archive_unchecked;
        self.lookups_sent += o.lookups_sent;
        self.lookups_ok += o.lookups_ok;
        for (k, v) in &o.lookup_failures {
            *self.lookup_failures.entry(k.clone()).or_default() += v;
        }
        self.lookups_skipped += o.lookups_skipped;
        self.lookup_results += o.lookup_results;
        self.lookup.merge(&o.lookup);
        self.rooms_created += o.rooms_created;
        self.rooms_existed += o.rooms_existed;
        self.rooms_ready += o.rooms_ready;
        for (k, v) in &o.room_failures {
            *self.room_failures.entry(k.clone()).or_default() += v;
        }
        self.joins_ok += o.joins_ok;
        self.join_retries += o.join_retries;
        self.room_presence_rx += o.room_presence_rx;
    }

    /// muc-light, muc: rooms that failed in total.
    pub fn rooms_failed(&self) -> u64 {
        self.room_failures.values().sum()
    }

    /// mam: failed lookups in total.
    pub fn lookups_failed(&self) -> u64 {
        self.lookup_failures.values().sum()
    }

    /// Failed resumptions in total.
    pub fn resumes_failed(&self) -> u64 {
        self.resume_failures.values().sum()
    }
}

impl WorkerReport {
    /// An empty report with the phase histograms in place.
    pub fn new() -> Self {
        WorkerReport { phases: vec![Hist::default(); PHASES.len()], ..Default::default() }
    }

    /// Records a successful login that started at `start_us` (Unix µs).
    pub fn login_ok(&mut self, start_us: u64, times: &PhaseTimes) {
        self.logins += 1;
        self.login.record(times.total);
        for (h, v) in self.phases.iter_mut().zip(times.phases) {
            if v > 0 {
                h.record(v);
            }
        }
        self.last_login_end_us = self.last_login_end_us.max(start_us + times.total);
    }

    /// Records a login start (Unix µs).
    pub fn login_started(&mut self, start_us: u64) {
        self.login_attempts += 1;
        if self.first_login_start_us == 0 || start_us < self.first_login_start_us {
            self.first_login_start_us = start_us;
        }
    }

    /// Counts a failed login by reason.
    pub fn login_failed(&mut self, e: &LoginError) {
        *self.login_failures.entry(e.to_string()).or_default() += 1;
    }

    /// Counts a session lost before the end.
    pub fn disconnected(&mut self, reason: String) {
        *self.disconnects.entry(reason).or_default() += 1;
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &WorkerReport) {
        self.users += o.users;
        self.login_attempts += o.login_attempts;
        self.logins += o.logins;
        for (k, v) in &o.login_failures {
            *self.login_failures.entry(k.clone()).or_default() += v;
        }
        self.late_logins += o.late_logins;
        if o.first_login_start_us != 0
            && (self.first_login_start_us == 0 || o.first_login_start_us < self.first_login_start_us)
        {
            self.first_login_start_us = o.first_login_start_us;
        }
        self.last_login_end_us = self.last_login_end_us.max(o.last_login_end_us);
        self.login.merge(&o.login);
        if self.phases.len() < o.phases.len() {
            self.phases.resize(o.phases.len(), Hist::default());
        }
        for (a, b) in self.phases.iter_mut().zip(&o.phases) {
            a.merge(b);
        }
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.stale += o.stale;
        self.errors += o.errors;
        for (k, v) in &o.disconnects {
            *self.disconnects.entry(k.clone()).or_default() += v;
        }
        self.ttd.merge(&o.ttd);
        self.late.merge(&o.late);
        self.registered += o.registered;
        self.existed += o.existed;
        self.scram_derivations += o.scram_derivations;
        self.generator_cpu_ms += o.generator_cpu_ms;
        self.generator_rss_kib += o.generator_rss_kib;
        self.extra.merge(&o.extra);
    }

    /// Failed logins in total.
    pub fn failures(&self) -> u64 {
        self.login_failures.values().sum()
    }

    /// Successful logins per second, from the first login start to the last completion.
    pub fn logins_per_s(&self) -> f64 {
        if self.logins == 0 || self.last_login_end_us <= self.first_login_start_us {
            return 0.0;
        }
        self.logins as f64 * 1e6 / (self.last_login_end_us - self.first_login_start_us) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = WorkerReport::new();
        let mut b = WorkerReport::new();
        a.login_started(1_000_000);
        a.login_ok(1_000_000, &PhaseTimes { phases: [100, 0, 300, 200, 100], total: 700 });
        b.login_started(900_000);
        b.login_ok(900_000, &PhaseTimes { phases: [100, 0, 300, 200, 100], total: 1_100_000 });
        b.login_failed(&LoginError { phase: Phase::Auth, reason: "SASL failure not-authorized".into() });
        a.sent = 10;
        b.delivered = 9;
        a.ttd.record(500);
        b.ttd.record(1500);
        let b: WorkerReport = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let mut m = WorkerReport::new();
        m.merge(&a);
        m.merge(&b);
        assert_eq!((m.logins, m.login_attempts, m.failures()), (2, 2, 1));
        assert_eq!(m.login_failures.get("auth: SASL failure not-authorized"), Some(&1));
        assert_eq!((m.first_login_start_us, m.last_login_end_us), (900_000, 2_000_000));
        assert!((m.logins_per_s() - 2.0 / 1.1).abs() < 1e-9);
        assert_eq!((m.sent, m.delivered, m.ttd.len()), (10, 9, 2));
        assert_eq!(m.phases[Phase::Auth as usize].len(), 2);
        assert!(m.phases[Phase::Tls as usize].is_empty());
    }
}
