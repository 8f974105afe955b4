"""Meerkat driven by slixmpp, an XMPP client library no one here wrote."""

import asyncio
import socket
import ssl

import pytest

from conftest import Client, mechanisms_offered

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_each_sasl_mechanism_over_starttls(server, mech):
    c = Client("alice@localhost/" + mech, "alice-secret", mech=mech)
    assert await c.login(server), f"login with {mech} failed"
    assert c.boundjid.full == "alice@localhost/" + mech
    await c.close()


async def test_direct_tls_listener(server):
    c = Client("bob@localhost/direct", "bob-secret", direct_tls=True)
    assert await c.login(server)
    await c.close()


async def test_plain_not_offered_in_the_clear(server):
    mechs = mechanisms_offered(server)
    assert "SCRAM-SHA-256" in mechs and "PLAIN" not in mechs


async def test_wrong_password_fails(server):
    c = Client("alice@localhost/wrong", "not-the-password")
    assert await c.login(server) is False
    await c.close()


async def test_messages_to_full_and_bare_jid(server):
    a = Client("alice@localhost/a", "alice-secret")
    b = Client("bob@localhost/b", "bob-secret")
    assert await a.login(server) and await b.login(server)
    a.send_message(mto="bob@localhost/b", mbody="to full", mtype="chat")
    m = await b.next_message()
    assert m["body"] == "to full" and m["from"].full == "alice@localhost/a"
    a.send_message(mto="bob@localhost", mbody="to bare", mtype="chat")
    m = await b.next_message(pred=lambda m: m["body"] == "to bare")
    assert m["to"].bare == "bob@localhost"
    await a.close()
    await b.close()


async def test_subscription_roster_and_presence(server):
    a = Client("carol@localhost/c", "carol-secret")
    b = Client("dave@localhost/d", "dave-secret")
    b.auto_authorize = True
    b.auto_subscribe = False
    assert await a.login(server) and await b.login(server)
    a.send_presence(pto="dave@localhost", ptype="subscribe")
    # Carol gets Dave's presence once he approves.
    p = await a.next_presence(pred=lambda p: p["from"].bare == "dave@localhost" and p["type"] == "available")
    assert p["from"].full == "dave@localhost/d"
    await asyncio.sleep(0.2)
    await a.get_roster()
    item = a.client_roster["dave@localhost"]
    assert item["subscription"] == "to", item
    # Dave's status change reaches Carol; Dave going offline too.
    b.send_presence(pshow="away", pstatus="lunch")
    p = await a.next_presence(pred=lambda p: p["from"].bare == "dave@localhost" and p["type"] == "away")
    assert p["status"] == "lunch"
    await b.close()
    p = await a.next_presence(pred=lambda p: p["from"].bare == "dave@localhost" and p["type"] == "unavailable")
    await a.close()


async def test_offline_delivery(server):
    a = Client("alice@localhost/off", "alice-secret")
    assert await a.login(server)
    a.send_message(mto="erin@localhost", mbody="while you were out", mtype="chat")
    await asyncio.sleep(0.3)
    await a.close()
    e = Client("erin@localhost/e", "erin-secret")
    e.register_plugin("xep_0203")
    assert await e.login(server)
    m = await e.next_message()
    assert m["body"] == "while you were out"
    assert m["delay"]["stamp"] is not None
    await e.close()


async def test_vcard(server):
    a = Client("alice@localhost/vc", "alice-secret")
    a.register_plugin("xep_0054")
    assert await a.login(server)
    vcard = a.plugin["xep_0054"].make_vcard()
    vcard["FN"] = "Alice Liddell"
    vcard["NICKNAME"] = "al"
    await a.plugin["xep_0054"].publish_vcard(vcard)
    b = Client("bob@localhost/vc", "bob-secret")
    b.register_plugin("xep_0054")
    assert await b.login(server)
    res = await b.plugin["xep_0054"].get_vcard("alice@localhost", cached=False)
    assert res["vcard_temp"]["FN"] == "Alice Liddell"
    await a.close()
    await b.close()


async def test_blocking(server):
    a = Client("alice@localhost/bl", "alice-secret")
    a.register_plugin("xep_0191")
    b = Client("bob@localhost/bl", "bob-secret")
    assert await a.login(server) and await b.login(server)
    await a.plugin["xep_0191"].block(["bob@localhost"])
    blocked = await a.plugin["xep_0191"].get_blocked()
    assert "bob@localhost" in [str(item["jid"]) for item in blocked["blocklist"]["items"]]
    b.send_message(mto="alice@localhost/bl", mbody="blocked?", mtype="chat")
    a.send_message(mto="alice@localhost/bl", mbody="self-check", mtype="chat")
    m = await a.next_message(pred=lambda m: m["body"] in ("blocked?", "self-check"))
    assert m["body"] == "self-check", "a message from a blocked contact was delivered"
    await a.plugin["xep_0191"].unblock(["bob@localhost"])
    b.send_message(mto="alice@localhost/bl", mbody="unblocked", mtype="chat")
    m = await a.next_message(pred=lambda m: m["body"] == "unblocked")
    await a.close()
    await b.close()


async def test_disco_version_time_ping(server):
    a = Client("alice@localhost/disco", "alice-secret")
    for p in ["xep_0030", "xep_0092", "xep_0202", "xep_0199"]:
        a.register_plugin(p)
    assert await a.login(server)
    info = await a.plugin["xep_0030"].get_info(jid="localhost")
    feats = info["disco_info"]["features"]
    for f in ["urn:xmpp:ping", "jabber:iq:version", "urn:xmpp:time", "vcard-temp", "msgoffline", "jabber:iq:last"]:
        assert f in feats, (f, feats)
    v = await a.plugin["xep_0092"].get_version("localhost")
    assert v["software_version"]["name"] == "Meerkat"
    t = await a.plugin["xep_0202"].get_entity_time("localhost")
    # XEP-0202 §3: <utc> is a XEP-0082 DateTime ending in Z (slixmpp's own parser
    # appends another Z, so read the raw element).
    utc = t.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}utc").text
    assert utc.endswith("Z") and utc.startswith("20"), utc
    assert t.xml.find("{urn:xmpp:time}time/{urn:xmpp:time}tzo").text == "+00:00"
    rtt = await a.plugin["xep_0199"].ping("localhost", timeout=5)
    assert rtt >= 0
    await a.close()


async def test_bad_input_does_not_hurt_other_sessions(server):
    a = Client("alice@localhost/steady", "alice-secret")
    b = Client("bob@localhost/steady", "bob-secret")
    assert await a.login(server) and await b.login(server)
    # A raw TLS connection sends garbage and gets a stream error.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.tls_port)), server_hostname="localhost")
    raw.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'><message><<<not xml/></message>")
    data = b""
    raw.settimeout(5)
    while b"</stream:stream>" not in data:
        chunk = raw.recv(4096)
        if not chunk:
            break
        data += chunk
    assert b"not-well-formed" in data, data
    raw.close()
    a.send_message(mto="bob@localhost/steady", mbody="still here", mtype="chat")
    m = await b.next_message(pred=lambda m: m["body"] == "still here")
    await a.close()
    await b.close()


async def test_stream_management_resume_after_a_killed_connection(server):
    a = Client("alice@localhost/sm", "alice-secret")
    a.register_plugin("xep_0198")
    a.end_session_on_disconnect = False
    enabled = asyncio.get_event_loop().create_future()
    resumed = asyncio.get_event_loop().create_future()
    a.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))
    a.add_event_handler("session_resumed", lambda _: resumed.done() or resumed.set_result(True))
    b = Client("bob@localhost/sm", "bob-secret")
    assert await a.login(server) and await b.login(server)
    await asyncio.wait_for(enabled, 10)
    b.send_message(mto="alice@localhost/sm", mbody="before", mtype="chat")
    assert (await a.next_message())["body"] == "before"
    # The connection dies without </stream:stream>; messages arrive meanwhile.
    a.transport.abort()
    await asyncio.sleep(0.5)
    for i in range(3):
        b.send_message(mto="alice@localhost/sm", mbody=f"while away {i}", mtype="chat")
    await asyncio.sleep(0.3)
    a.connect("127.0.0.1", server.starttls_port)
    await asyncio.wait_for(resumed, 10)
    got = []
    while True:
        try:
            got.append((await a.next_message(timeout=1.5))["body"])
        except (asyncio.TimeoutError, TimeoutError):
            break
    assert got == ["while away 0", "while away 1", "while away 2"], got
    await a.close()
    await b.close()


async def test_message_archive_paged_with_slixmpp_mam(server):
    a = Client("alice@localhost/mam", "alice-secret")
    b = Client("dave@localhost/mam", "dave-secret")
    for c in (a, b):
        c.register_plugin("xep_0030")
        c.register_plugin("xep_0059")
        c.register_plugin("xep_0313")
    assert await a.login(server) and await b.login(server)
    info = await b.plugin["xep_0030"].get_info(jid="dave@localhost")
    assert "urn:xmpp:mam:2" in info["disco_info"]["features"]
    sent = [f"archived {i:02}" for i in range(25)]
    for body in sent:
        a.send_message(mto="dave@localhost", mbody=body, mtype="chat")
    for body in sent:
        await b.next_message(pred=lambda m, body=body: m["body"] == body)
    # Forwards and backwards in pages of 10 (XEP-0059 through slixmpp's iterator).
    forward = [m["mam_result"]["forwarded"]["stanza"]["body"]
               async for m in b.plugin["xep_0313"].iterate(with_jid="alice@localhost", rsm={"max": 10})]
    assert forward == sent
    backward = [m["mam_result"]["forwarded"]["stanza"]["body"]
                async for m in b.plugin["xep_0313"].iterate(with_jid="alice@localhost", reverse=True, rsm={"max": 10})]
    assert backward == list(reversed(sent))
    # The sender's archive has the same conversation.
    mine = [m["mam_result"]["forwarded"]["stanza"]["body"]
            async for m in a.plugin["xep_0313"].iterate(with_jid="dave@localhost", rsm={"max": 10})]
    assert mine == sent
    await a.close()
    await b.close()


async def test_group_chat_with_slixmpp_muc(server):
    """XEP-0045 through slixmpp's xep_0045 plugin: create and configure a room,
    join, chat, history, affiliations, a kick, and the room's archive."""
    room = "tea@conference.localhost"
    owner = Client("alice@localhost/muc", "alice-secret")
    guest = Client("bob@localhost/muc", "bob-secret")
    late = Client("carol@localhost/muc", "carol-secret")
    for c in (owner, guest, late):
        for p in ("xep_0030", "xep_0045", "xep_0004", "xep_0059", "xep_0313"):
            c.register_plugin(p)
    assert await owner.login(server) and await guest.login(server) and await late.login(server)
    items = await owner.plugin["xep_0030"].get_items(jid="localhost")
    assert "conference.localhost" in [i[0] for i in items["disco_items"]["items"]]

    # Create: the room is locked (201) until the owner submits the form.
    muc = owner.plugin["xep_0045"]
    presence, subject, occupants, history = await muc.join_muc_wait(room, "Alice", timeout=10)
    assert "201" in [str(s) for s in presence["muc"]["status_codes"]]
    form = await muc.get_room_config(room)
    assert "muc#roomconfig_roomname" in [f["var"] for f in form["fields"]]
    submit = owner.plugin["xep_0004"].make_form(ftype="submit")
    submit.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    submit.add_field(var="muc#roomconfig_roomname", value="Tea room")
    submit.add_field(var="muc#roomconfig_persistentroom", ftype="boolean", value=True)
    await muc.set_room_config(room, submit)
    info = await owner.plugin["xep_0030"].get_info(jid=room)
    features = info["disco_info"]["features"]
    assert "muc_persistent" in features and "urn:xmpp:mam:2" in features, features

    # Join and chat: both see every message, from the sender's occupant JID.
    _, _, occupants, _ = await guest.plugin["xep_0045"].join_muc_wait(room, "Bob", timeout=10)
    assert [str(p["from"]) for p in occupants] == [room + "/Alice", room + "/Bob"]
    for i in range(3):
        owner.send_message(mto=room, mbody=f"hello {i}", mtype="groupchat")
    for c in (owner, guest):
        for i in range(3):
            m = await c.next_message(pred=lambda m, i=i: m["body"] == f"hello {i}")
            assert m["type"] == "groupchat" and str(m["from"]) == room + "/Alice"

    # A late joiner gets the last two messages as history.
    muc_presences = asyncio.Queue()
    late.add_event_handler("groupchat_presence", muc_presences.put_nowait)
    _, _, _, history = await late.plugin["xep_0045"].join_muc_wait(room, "Carol", maxstanzas=2, timeout=10)
    assert [m["body"] for m in history] == ["hello 1", "hello 2"]

    # Affiliations: Bob becomes a member; the owner reads the member list.
    await muc.set_affiliation(room, "member", jid="bob@localhost")
    members = await muc.get_affiliation_list(room, "member")
    assert [str(j) for j in members] == ["bob@localhost"]

    # A kick: Carol is removed with status 307.
    await muc.set_role(room, "Carol", "none", reason="bye")
    while True:
        p = await asyncio.wait_for(muc_presences.get(), 5)
        if p["type"] == "unavailable" and str(p["from"]) == room + "/Carol":
            break
    assert "307" in [str(s) for s in p["muc"]["status_codes"]]

    # The room's archive, paged through slixmpp's MAM iterator.
    archived = [m["mam_result"]["forwarded"]["stanza"]["body"]
                async for m in guest.plugin["xep_0313"].iterate(jid=room, rsm={"max": 2})]
    assert archived == ["hello 0", "hello 1", "hello 2"], archived
    for c in (owner, guest, late):
        await c.close()


async def test_muc_refusals_with_slixmpp(server):
    """XEP-0045 errors as slixmpp sees them: a taken nick, a wrong password, a ban,
    a members-only room; then a nick change and the room's destruction."""
    from slixmpp.exceptions import IqError, PresenceError
    room = "vault@conference.localhost"
    owner = Client("dave@localhost/muc2", "dave-secret")
    other = Client("erin@localhost/muc2", "erin-secret")
    for c in (owner, other):
        for p in ("xep_0030", "xep_0045", "xep_0004"):
            c.register_plugin(p)
    assert await owner.login(server) and await other.login(server)
    muc, omuc = owner.plugin["xep_0045"], other.plugin["xep_0045"]
    await muc.join_muc_wait(room, "Dave", timeout=10)
    form = owner.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    form.add_field(var="muc#roomconfig_passwordprotectedroom", ftype="boolean", value=True)
    form.add_field(var="muc#roomconfig_roomsecret", value="sesame")
    await muc.set_room_config(room, form)

    async def join_error(nick, password=None):
        try:
            await omuc.join_muc_wait(room, nick, password=password, timeout=5)
        except PresenceError as e:
            return e.presence["error"]["condition"]
        return None

    assert await join_error("Dave", "sesame") == "conflict"
    assert await join_error("Erin", "wrong") == "not-authorized"
    # Banned: forbidden; after the ban is lifted and the room is members-only: registration-required.
    await muc.set_affiliation(room, "outcast", jid="erin@localhost", reason="test")
    assert await join_error("Erin", "sesame") == "forbidden"
    await muc.set_affiliation(room, "none", jid="erin@localhost")
    form = owner.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    form.add_field(var="muc#roomconfig_membersonly", ftype="boolean", value=True)
    await muc.set_room_config(room, form)
    assert await join_error("Erin", "sesame") == "registration-required"
    # A member gets in; a non-owner cannot read the configuration.
    await muc.set_affiliation(room, "member", jid="erin@localhost")
    await omuc.join_muc_wait(room, "Erin", password="sesame", timeout=10)
    try:
        await omuc.get_room_config(room)
        raise AssertionError("a member read the configuration")
    except IqError as e:
        assert e.iq["error"]["condition"] == "forbidden"
    # Nick change, seen by the owner as unavailable with 303 and the new nick.
    presences = asyncio.Queue()
    owner.add_event_handler("groupchat_presence", presences.put_nowait)
    await omuc.set_self_nick(room, "Erin2")
    while True:
        p = await asyncio.wait_for(presences.get(), 5)
        if str(p["from"]) == room + "/Erin" and p["type"] == "unavailable":
            assert "303" in [str(s) for s in p["muc"]["status_codes"]]
            item = p.xml.find(".//{http://jabber.org/protocol/muc#user}item")
            assert item is not None and item.get("nick") == "Erin2"
            break
    # Destroy: the member is told, with the reason.
    mine = asyncio.Queue()
    other.add_event_handler("groupchat_presence", mine.put_nowait)
    await muc.destroy(room, reason="closing")
    while True:
        p = await asyncio.wait_for(mine.get(), 5)
        if p["type"] == "unavailable" and p.xml.find(".//{http://jabber.org/protocol/muc#user}destroy") is not None:
            break
    await owner.close()
    await other.close()


async def test_room_registration_with_slixmpp(server):
    """XEP-0045 §7.10 through slixmpp's XEP-0077 plugin: the room's registration
    form, a submitted nickname (membership and a reservation), <registered/>
    afterwards, and another user refused that nickname on join."""
    from slixmpp.exceptions import PresenceError
    room = "club@conference.localhost"
    owner = Client("dave@localhost/reg", "dave-secret")
    member = Client("erin@localhost/reg", "erin-secret")
    for c in (owner, member):
        for p in ("xep_0030", "xep_0045", "xep_0004", "xep_0077"):
            c.register_plugin(p)
    assert await owner.login(server) and await member.login(server)
    muc = owner.plugin["xep_0045"]
    await muc.join_muc_wait(room, "Dave", timeout=10)
    submit = owner.plugin["xep_0004"].make_form(ftype="submit")
    submit.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#roomconfig")
    await muc.set_room_config(room, submit)

    reg = member.plugin["xep_0077"]
    form = (await reg.get_registration(jid=room))["register"]["form"]
    assert "muc#register_roomnick" in [f["var"] for f in form["fields"]], form
    iq = member.Iq(stype="set", sto=room)
    answer = iq["register"]["form"]
    answer["type"] = "submit"
    answer.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/muc#register")
    answer.add_field(var="muc#register_roomnick", value="Erin")
    await iq.send(timeout=10)
    again = (await reg.get_registration(jid=room))["register"]
    assert again["registered"] and again["username"] == "Erin", again
    members = await muc.get_affiliation_list(room, "member")
    assert [str(j) for j in members] == ["erin@localhost"]

    # The owner may not take the reserved nickname.
    try:
        await owner.plugin["xep_0045"].join_muc_wait(room, "Erin", timeout=10)
        raise AssertionError("a reserved nickname was accepted")
    except PresenceError as e:
        assert e.condition == "conflict", e
    await owner.close()
    await member.close()


async def test_muc_light_with_slixmpp(server):
    """MUC Light driven through slixmpp's stanza API (no plugin exists for it):
    create a room with a member, chat, read the occupant list, leave."""
    from slixmpp.xmlstream import ET
    room = "den@muclight.localhost"
    a = Client("alice@localhost/ml", "alice-secret")
    b = Client("bob@localhost/ml", "bob-secret")
    assert await a.login(server) and await b.login(server)
    iq = a.make_iq_set(ito=room)
    iq.append(ET.fromstring(
        "<query xmlns='urn:xmpp:muclight:0#create'><configuration><roomname>Den</roomname></configuration>"
        "<occupants><user affiliation='member'>bob@localhost</user></occupants></query>"))
    await iq.send(timeout=10)
    a.send_message(mto=room, mbody="hello den", mtype="groupchat")
    for c in (a, b):
        m = await c.next_message(pred=lambda m: m["body"] == "hello den")
        assert str(m["from"]) == room + "/alice@localhost" and m["type"] == "groupchat"
    iq = b.make_iq_get(ito=room)
    iq.append(ET.fromstring("<query xmlns='urn:xmpp:muclight:0#affiliations'/>"))
    r = await iq.send(timeout=10)
    users = {u.text: u.get("affiliation") for u in r.xml.iter("{urn:xmpp:muclight:0#affiliations}user")}
    assert users == {"alice@localhost": "owner", "bob@localhost": "member"}, users
    iq = b.make_iq_set(ito=room)
    iq.append(ET.fromstring("<query xmlns='urn:xmpp:muclight:0#affiliations'><user affiliation='none'>bob@localhost</user></query>"))
    await iq.send(timeout=10)
    iq = b.make_iq_get(ito=room)
    iq.append(ET.fromstring("<query xmlns='urn:xmpp:muclight:0#configuration'/>"))
    try:
        await iq.send(timeout=10)
        raise AssertionError("a former occupant read the configuration")
    except Exception as e:  # IqError
        assert e.iq["error"]["condition"] == "item-not-found"
    await a.close()
    await b.close()
