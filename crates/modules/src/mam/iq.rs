//! XEP-0313 queries (§4), form discovery (§4.1.1), archive metadata (§5), and
//! XEP-0441 preferences, in the `urn:xmpp:mam:2` and `urn:xmpp:mam:1` namespaces.
//!
//! Paging is XEP-0059 over archive ids: `<after/>` and `after-id` are exclusive lower
//! bounds, `<before/>` and `before-id` exclusive upper bounds, `start`/`end` become
//! id bounds (ids are made of their time), and a `<before/>` (empty or not) pages
//! from the end. `<max/>` above `max_result_limit` is clamped (§4.3.1). `<count/>`
//! is never returned (a count is a scan of the archive) and `<index/>` is refused
//! with `feature-not-implemented` (it is an offset scan).

use std::sync::Arc;
use std::time::Duration;

use meerkat_core::hooks::{IqHandler, IqRequest, IqResult};
use meerkat_core::util::{random_id, xep82_datetime};
use meerkat_core::{account, ServerContext};
use meerkat_stanza::{ns, BareJid, Jid, StanzaError, StanzaErrorCondition};
use meerkat_storage::{ArchiveMode, ArchivePage, ArchivePrefs, ArchiveQuery, ArchivedMessage, PageFrom};
use meerkat_xml::{Element, Limits};

use super::{Mam, NS_MAM1, NS_MAM2};
use crate::stanza_id::{decode_id, encode_id, id_micros, id_range_of_micros};

const NS_RSM: &str = "http://jabber.org/protocol/rsm";

fn storage_error(e: meerkat_storage::Error) -> StanzaError {
    tracing::error!(error = %e, "archive storage failure");
    StanzaError::internal()
}

/// A parsed query.
struct Query {
    q: ArchiveQuery,
    /// Ids named by `after-id`, `before-id`, `<after/>`, `<before/>`, which must exist.
    referenced: Vec<i64>,
    /// The `ids` field.
    ids: Option<Vec<i64>>,
    flip: bool,
}

#[async_trait::async_trait]
impl IqHandler for Mam {
    async fn handle_iq(&self, ctx: &ServerContext, req: IqRequest<'_>) -> IqResult {
        let ns = req.payload.ns();
        let ns: &'static str = if ns == NS_MAM1 { NS_MAM1 } else { NS_MAM2 };
        // §4.1: only the archive's owner queries a user archive.
        let owner = req.to.to_bare();
        if req.from.to_bare() != owner {
            return Err(StanzaError::forbidden());
        }
        match (req.payload.name(), req.is_set) {
            ("query", false) => Ok(Some(form(ns))),
            ("query", true) => self.handle_query(ctx, req, ns, &owner).await,
            ("prefs", false) => Ok(Some(prefs_element(ns, &*self.load_prefs(ctx, &owner).await?))),
            ("prefs", true) => self.handle_set_prefs(ctx, req.payload, ns, &owner).await,
            ("metadata", false) if ns == NS_MAM2 => self.handle_metadata(ctx, &owner).await,
            _ => Err(StanzaError::bad_request("expected <query/>, <prefs/> or <metadata/>")),
        }
    }
}

impl Mam {
    async fn load_prefs(&self, ctx: &ServerContext, owner: &BareJid) -> Result<Arc<ArchivePrefs>, StanzaError> {
        if let Some(p) = self.prefs.get(owner.as_str()) {
            return Ok(p);
        }
        let acc = account(owner).ok_or_else(StanzaError::forbidden)?;
        let p = ctx.stores.archive.get_prefs(acc).await.map_err(storage_error)?;
        let p = Arc::new(p.unwrap_or(ArchivePrefs { default_mode: self.default_mode, ..ArchivePrefs::default() }));
        self.prefs.insert(owner.as_str(), p.clone());
        Ok(p)
    }

    async fn handle_set_prefs(&self, ctx: &ServerContext, el: &Element, ns: &str, owner: &BareJid) -> IqResult {
        let default_mode = el
            .attr("default")
            .and_then(ArchiveMode::parse)
            .ok_or_else(|| StanzaError::bad_request("default must be always, roster or never"))?;
        let mut prefs = ArchivePrefs { default_mode, always: Vec::new(), never: Vec::new() };
        for (name, list) in [("always", &mut prefs.always), ("never", &mut prefs.never)] {
            for j in el.get_child(name, el.ns()).into_iter().flat_map(|l| l.children()) {
                if !j.is("jid", el.ns()) {
                    return Err(StanzaError::bad_request("only <jid/> elements in <always/> and <never/>"));
                }
                let jid: Jid =
                    j.text().trim().parse().map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?;
                list.push(jid.to_bare().as_str().to_owned());
            }
            list.sort();
            list.dedup();
        }
        let acc = account(owner).ok_or_else(StanzaError::forbidden)?;
        ctx.stores.archive.set_prefs(acc, &prefs).await.map_err(storage_error)?;
        let el = prefs_element(ns, &prefs);
        self.prefs.insert(owner.as_str(), Arc::new(prefs));
        Ok(Some(el))
    }

    async fn handle_metadata(&self, ctx: &ServerContext, owner: &BareJid) -> IqResult {
        let acc = account(owner).ok_or_else(StanzaError::forbidden)?;
        self.flush(owner).await?;
        let mut md = Element::builder("metadata", NS_MAM2);
        let q = ArchiveQuery { limit: 1, ..ArchiveQuery::default() };
        let first = ctx.stores.archive.query(acc, &q).await.map_err(storage_error)?;
        let q = ArchiveQuery { limit: 1, from: PageFrom::End, ..ArchiveQuery::default() };
        let last = ctx.stores.archive.query(acc, &q).await.map_err(storage_error)?;
        // §5: an empty archive gets an empty <metadata/>.
        if let (Some(f), Some(l)) = (first.rows.first(), last.rows.last()) {
            for (name, id) in [("start", f.id), ("end", l.id)] {
                md = md.append(
                    Element::builder(name, NS_MAM2).attr("id", encode_id(id)).attr("timestamp", stamp(id)).build(),
                );
            }
        }
        Ok(Some(md.build()))
    }

    /// Read-your-writes: the owner's queued rows are written before a query.
    async fn flush(&self, owner: &BareJid) -> Result<(), StanzaError> {
        if self.writer.flush_user(owner.as_str(), Duration::from_secs(10)).await {
            Ok(())
        } else {
            tracing::error!(user = %owner, "archive: pending rows not written in time for a query");
            Err(StanzaError::internal())
        }
    }

    async fn handle_query(
        &self,
        ctx: &ServerContext,
        req: IqRequest<'_>,
        ns: &'static str,
        owner: &BareJid,
    ) -> IqResult {
        let (results, fin) = self.query(ctx, owner, req.from, req.payload, ns).await?;
        if let Some(s) = req.session {
            for el in results {
                s.send(el);
            }
        }
        Ok(Some(fin))
    }

    /// Runs the query `payload` (in `ns`) on `owner`'s archive (a user's or a
    /// room's) for `requester`, whose right to read it the caller checked.
    /// Returns the result messages (from `owner` to `requester`, to be sent
    /// before the IQ result) and the `<fin/>` payload of the IQ result.
    pub(crate) async fn query(
        &self,
        ctx: &ServerContext,
        owner: &BareJid,
        requester: &Jid,
        payload: &Element,
        ns: &'static str,
    ) -> Result<(Vec<Element>, Element), StanzaError> {
        let acc = account(owner).ok_or_else(StanzaError::forbidden)?;
        let mut parsed = parse_query(payload, ns, self.cfg.default_result_limit, self.cfg.max_result_limit)?;
        self.flush(owner).await?;
        let queryid = payload.attr("queryid");
        let mut wanted: Vec<i64> = parsed.referenced.clone();
        wanted.extend(parsed.ids.iter().flatten());
        if !wanted.is_empty() {
            let found = ctx.stores.archive.fetch_ids(acc, &wanted).await.map_err(storage_error)?;
            // §4.1.5 and §4.3.2: every id the client names must exist.
            if wanted.iter().any(|id| !found.iter().any(|m| m.id == *id)) {
                return Err(StanzaError::item_not_found());
            }
            if parsed.ids.take().is_some() {
                let rows: Vec<ArchivedMessage> = found.into_iter().filter(|m| matches(&parsed.q, m)).collect();
                return Ok(page_messages(owner, requester, queryid, ns, page_of(rows, &parsed.q), parsed.flip));
            }
        }
        let page = ctx.stores.archive.query(acc, &parsed.q).await.map_err(storage_error)?;
        Ok(page_messages(owner, requester, queryid, ns, page, parsed.flip))
    }
}

/// The result messages of a page (from the archive's owner to the requester)
/// and the `<fin/>`.
fn page_messages(
    owner: &BareJid,
    requester: &Jid,
    queryid: Option<&str>,
    ns: &'static str,
    page: ArchivePage,
    flip: bool,
) -> (Vec<Element>, Element) {
    let limits = Limits::default();
    let mut out = Vec::with_capacity(page.rows.len());
    for m in &page.rows {
        let inner = match meerkat_xml::parse_element(&m.stanza, &limits) {
            Ok(mut el) => {
                el.set_ns(ns::CLIENT);
                el
            }
            Err(e) => {
                tracing::error!(id = m.id, error = %e, "archived message does not parse; skipped");
                continue;
            }
        };
        let mut result = Element::builder("result", ns).attr("id", encode_id(m.id));
        if let Some(q) = queryid {
            result = result.attr("queryid", q);
        }
        let forwarded = Element::builder("forwarded", ns::FORWARD)
            .append(Element::builder("delay", ns::DELAY).attr("stamp", stamp(m.id)).build())
            .append(inner)
            .build();
        out.push(
            Element::builder("message", ns::CLIENT)
                .attr("to", requester.as_str())
                .attr("from", owner.as_str())
                .attr("id", random_id(12))
                .append(result.append(forwarded).build())
                .build(),
        );
    }
    if flip {
        out.reverse();
    }
    let mut set = Element::builder("set", NS_RSM);
    if let (Some(f), Some(l)) = (page.rows.first(), page.rows.last()) {
        set = set
            .append(Element::builder("first", NS_RSM).text(encode_id(f.id)).build())
            .append(Element::builder("last", NS_RSM).text(encode_id(l.id)).build());
    }
    let mut fin = Element::builder("fin", ns).attr("complete", if page.complete { "true" } else { "false" });
    if ns == NS_MAM1 {
        if let Some(q) = queryid {
            fin = fin.attr("queryid", q);
        }
    }
    (out, fin.append(set.build()).build())
}

/// The delay stamp of an archive id.
fn stamp(id: i64) -> String {
    xep82_datetime(id_micros(id) / 1000)
}

/// Whether a row fetched by id matches the rest of the query.
fn matches(q: &ArchiveQuery, m: &ArchivedMessage) -> bool {
    (q.min_id..=q.max_id).contains(&m.id)
        && q.with_jid.as_ref().is_none_or(|w| *w == m.with_jid)
        && q.with_resource.as_ref().is_none_or(|r| *r == m.with_resource)
}

/// A page out of rows fetched by id (oldest first).
fn page_of(mut rows: Vec<ArchivedMessage>, q: &ArchiveQuery) -> ArchivePage {
    let complete = rows.len() <= q.limit;
    match q.from {
        PageFrom::Start => rows.truncate(q.limit),
        PageFrom::End => {
            let cut = rows.len().saturating_sub(q.limit);
            rows.drain(..cut);
        }
    }
    ArchivePage { rows, complete }
}

/// An id given by the client; `item-not-found` when it cannot be one of ours.
fn client_id(s: &str) -> Result<i64, StanzaError> {
    decode_id(s.trim()).ok_or_else(StanzaError::item_not_found)
}

fn parse_query(el: &Element, ns: &str, default_limit: usize, max_limit: usize) -> Result<Query, StanzaError> {
    let mut q = ArchiveQuery { limit: default_limit, ..ArchiveQuery::default() };
    let mut referenced = Vec::new();
    let mut ids = None;
    let mut flip = false;
    for child in el.children() {
        match (child.name(), child.ns()) {
            ("x", ns::DATA_FORMS) => parse_form(child, ns, &mut q, &mut referenced, &mut ids, max_limit)?,
            ("set", NS_RSM) => parse_rsm(child, &mut q, &mut referenced, max_limit)?,
            ("flip-page", n) if n == ns => flip = true,
            _ => return Err(StanzaError::bad_request("unexpected element in the query")),
        }
    }
    Ok(Query { q, referenced, ids, flip })
}

fn parse_form(
    x: &Element,
    ns: &str,
    q: &mut ArchiveQuery,
    referenced: &mut Vec<i64>,
    ids: &mut Option<Vec<i64>>,
    max_ids: usize,
) -> Result<(), StanzaError> {
    if !matches!(x.attr("type"), Some("submit")) {
        return Err(StanzaError::bad_request("the query form must be of type submit"));
    }
    for f in x.children().filter(|c| c.is("field", ns::DATA_FORMS)) {
        let values: Vec<String> = f.children().filter(|v| v.is("value", ns::DATA_FORMS)).map(|v| v.text()).collect();
        let one = || -> Result<&str, StanzaError> {
            match values.as_slice() {
                [v] => Ok(v.trim()),
                _ => Err(StanzaError::bad_request("a query field takes one value")),
            }
        };
        match f.attr("var").unwrap_or_default() {
            "FORM_TYPE" => {
                if one()? != ns {
                    return Err(StanzaError::bad_request("FORM_TYPE must be the query's namespace"));
                }
            }
            "with" => {
                let jid: Jid = one()?.parse().map_err(|_| StanzaError::new(StanzaErrorCondition::JidMalformed))?;
                q.with_jid = Some(jid.to_bare().as_str().to_owned());
                q.with_resource = jid.resource().map(|r| r.as_str().to_owned());
            }
            "start" => {
                let us = parse_datetime(one()?).ok_or_else(|| StanzaError::bad_request("start is not a DateTime"))?;
                q.min_id = q.min_id.max(id_range_of_micros(us).0);
            }
            "end" => {
                let us = parse_datetime(one()?).ok_or_else(|| StanzaError::bad_request("end is not a DateTime"))?;
                q.max_id = q.max_id.min(id_range_of_micros(us).1);
            }
            "after-id" => {
                let id = client_id(one()?)?;
                referenced.push(id);
                q.min_id = q.min_id.max(id.saturating_add(1));
            }
            "before-id" => {
                let id = client_id(one()?)?;
                referenced.push(id);
                q.max_id = q.max_id.min(id - 1);
            }
            "ids" => {
                // Each id is a lookup: no more than a page's worth per query.
                if values.len() > max_ids {
                    return Err(StanzaError::new(StanzaErrorCondition::PolicyViolation)
                        .with_text(format!("at most {max_ids} ids per query")));
                }
                let list = values.iter().map(|v| client_id(v)).collect::<Result<Vec<_>, _>>()?;
                *ids = Some(list);
            }
            other => return Err(StanzaError::bad_request(&format!("unsupported query field {other:?}"))),
        }
    }
    Ok(())
}

fn parse_rsm(
    set: &Element,
    q: &mut ArchiveQuery,
    referenced: &mut Vec<i64>,
    max_limit: usize,
) -> Result<(), StanzaError> {
    for c in set.children() {
        if c.ns() != NS_RSM {
            return Err(StanzaError::bad_request("unexpected element in <set/>"));
        }
        let text = c.text();
        let text = text.trim();
        match c.name() {
            // §4.3.1: a server may limit pages; larger requests are clamped.
            "max" => {
                q.limit = text.parse::<usize>().map_err(|_| StanzaError::bad_request("bad <max/>"))?.min(max_limit)
            }
            "after" => {
                let id = client_id(text)?;
                referenced.push(id);
                q.min_id = q.min_id.max(id.saturating_add(1));
            }
            "before" => {
                q.from = PageFrom::End;
                if !text.is_empty() {
                    let id = client_id(text)?;
                    referenced.push(id);
                    q.max_id = q.max_id.min(id - 1);
                }
            }
            "index" => return Err(StanzaError::not_implemented()),
            _ => return Err(StanzaError::bad_request("unexpected element in <set/>")),
        }
    }
    Ok(())
}

/// XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`) in microseconds since the epoch.
pub(crate) fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok()).flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 6)];
        micros = frac.parse::<i64>().ok()? * 10i64.pow(6 - frac.len() as u32);
    }
    let offset = match &s[i..] {
        "Z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && tz.as_bytes()[3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if tz.starts_with('+') {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset * 60;
    Some(secs * 1_000_000 + micros)
}

/// Howard Hinnant's civil-to-days algorithm (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// §4.1.1: the query form with every supported field.
pub(crate) fn form(ns: &str) -> Element {
    let field =
        |var: &str, ty: &str| Element::builder("field", ns::DATA_FORMS).attr("var", var).attr("type", ty).build();
    let form_type = Element::builder("field", ns::DATA_FORMS)
        .attr("var", "FORM_TYPE")
        .attr("type", "hidden")
        .append(Element::builder("value", ns::DATA_FORMS).text(ns).build())
        .build();
    let x = Element::builder("x", ns::DATA_FORMS)
        .attr("type", "form")
        .append(form_type)
        .append(field("with", "jid-single"))
        .append(field("start", "text-single"))
        .append(field("end", "text-single"))
        .append(field("before-id", "text-single"))
        .append(field("after-id", "text-single"))
        .append(field("ids", "text-multi"))
        .build();
    Element::builder("query", ns).append(x).build()
}

fn prefs_element(ns: &str, p: &ArchivePrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        Element::builder(name, ns)
            .append_all(jids.iter().map(|j| Element::builder("jid", ns).text(j.as_str()).build()))
            .build()
    };
    Element::builder("prefs", ns)
        .attr("default", p.default_mode.as_str())
        .append(list("always", &p.always))
        .append(list("never", &p.never))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_datetime("2001-09-09T01:46:40.123Z"), Some(1_000_000_000_123_000));
        assert_eq!(parse_datetime("2001-09-09T03:46:40.5+02:00"), Some(1_000_000_000_500_000));
        assert_eq!(parse_datetime("2000-02-29T00:00:00Z"), Some(951_782_400_000_000));
        for bad in ["", "2001-09-09", "2001-13-09T00:00:00Z", "2001-09-09T00:00:00", "2001-09-09T00:00:00.Z", "x"] {
            assert_eq!(parse_datetime(bad), None, "{bad}");
        }
    }
}
