// Meerkat in a real browser: Converse.js creating, joining and chatting in a MUC
// room; Strophe.js over WebSocket (RFC 7395) and, in a
// second run, over BOSH (XEP-0124/0206, cross-origin: CORS), in headless Chromium
// driven by Playwright, exchanging messages with a plain TCP client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.MEERKAT_BIN || join(here, '../../target/debug/meerkat');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

async function freePort() {
  return new Promise((res) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); });
  });
}

async function waitPort(port) {
  for (let i = 0; i < 300; i++) {
    const ok = await new Promise((res) => {
      const c = net.connect(port, '127.0.0.1', () => { c.destroy(); res(true); });
      c.on('error', () => res(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('port ' + port + ' never opened');
}

/** A minimal TCP XMPP client (SASL PLAIN on a tls.mode = "none" listener). */
class TcpClient {
  constructor(port) { this.port = port; this.buf = ''; this.waiters = []; }
  async login(user, password, resource) {
    this.sock = net.connect(this.port, '127.0.0.1');
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d) => { this.buf += d; this.waiters.forEach((w) => w()); });
    const open = "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";
    this.sock.write(open);
    await this.until('</stream:features>');
    const cred = Buffer.from('\0' + user + '\0' + password).toString('base64');
    this.sock.write(`<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>${cred}</auth>`);
    await this.until('<success');
    this.buf = '';
    this.sock.write(open);
    await this.until('</stream:features>');
    this.sock.write(`<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>${resource}</resource></bind></iq><presence/>`);
    await this.until("id='b'");
  }
  until(text, ms = 10000) {
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('timeout waiting for ' + text + '; got ' + this.buf.slice(-500))), ms);
      const check = () => { if (this.buf.includes(text)) { clearTimeout(t); res(this.buf); } };
      this.waiters.push(check); check();
    });
  }
  send(xml) { this.sock.write(xml); }
  close() { this.sock.end('</stream:stream>'); }
}

let server, web, dir, ports;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'meerkat-browser-'));
  ports = { c2s: await freePort(), http: await freePort(), page: await freePort() };
  writeFileSync(join(dir, 'meerkat.toml'), `
[general]
hosts = ["localhost"]
data_dir = "${dir}"
[[listen.c2s]]
port = ${ports.c2s}
ip_address = "127.0.0.1"
tls.mode = "none"
[[listen.http]]
port = ${ports.http}
ip_address = "127.0.0.1"
[[listen.http.handlers.mod_websockets]]
path = "/ws-xmpp"
[[listen.http.handlers.mod_bosh]]
path = "/http-bind"
[storage]
url = "sqlite://${dir}/meerkat.db"
[modules.mod_roster]
[modules.mod_disco]
[modules.mod_ping]
[modules.mod_offline]
[modules.mod_muc]
`);
  const cfg = join(dir, 'meerkat.toml');
  execFileSync(BIN, ['--config', cfg, 'user', 'add', 'alice@localhost', 'alice-secret']);
  execFileSync(BIN, ['--config', cfg, 'user', 'add', 'bob@localhost', 'bob-secret']);
  server = spawn(BIN, ['--config', cfg, 'serve'], { stdio: 'inherit' });
  await waitPort(ports.http);
  const strophe = readFileSync(join(here, 'node_modules/strophe.js/dist/strophe.umd.min.js'));
  const page = readFileSync(join(here, 'page.html'));
  const conversePage = readFileSync(join(here, 'converse.html'));
  const dist = join(here, 'node_modules/converse.js/dist');
  const types = { js: 'text/javascript', css: 'text/css', json: 'application/json', wasm: 'application/wasm', svg: 'image/svg+xml', woff2: 'font/woff2', woff: 'font/woff', ttf: 'font/ttf', png: 'image/png' };
  web = createServer((req, res) => {
    const path = req.url.split('?')[0];
    if (path.startsWith('/strophe.umd.min.js')) { res.setHeader('content-type', 'text/javascript'); res.end(strophe); }
    else if (path.startsWith('/dist/') && !path.includes('..')) {
      try {
        const body = readFileSync(join(dist, path.slice('/dist/'.length)));
        res.setHeader('content-type', types[path.split('.').pop()] || 'application/octet-stream');
        res.end(body);
      } catch { res.statusCode = 404; res.end(); }
    }
    else if (path === '/converse.html') { res.setHeader('content-type', 'text/html'); res.end(conversePage); }
    else { res.setHeader('content-type', 'text/html'); res.end(page); }
  }).listen(ports.page, '127.0.0.1');
});

after(() => {
  web?.close();
  server?.kill();
});

async function chat(service, resource, shot) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${ports.page}/?service=${encodeURIComponent(service)}&jid=alice@localhost/${resource}&password=alice-secret`);
    await page.waitForFunction(() => String(window.xmppStatus).startsWith('online'), null, { timeout: 20000 });
    const bob = new TcpClient(ports.c2s);
    await bob.login('bob', 'bob-secret', 'tcp-' + resource);
    bob.send(`<message to='alice@localhost/${resource}' type='chat' id='m1'><body>hello ${resource}</body></message>`);
    await page.waitForFunction(() => window.received.length > 0, null, { timeout: 15000 });
    const got = await page.evaluate(() => window.received[0]);
    assert.equal(got.text, 'hello ' + resource);
    assert.equal(got.from, 'bob@localhost/tcp-' + resource);
    const echoed = await bob.until('echo: hello ' + resource, 15000);
    assert.match(echoed, new RegExp(`from=['"]alice@localhost/${resource}['"]`));
    mkdirSync(join(here, 'artifacts'), { recursive: true });
    await page.screenshot({ path: join(here, 'artifacts', shot) });
    bob.close();
  } finally {
    await browser.close();
  }
}

test('Strophe.js over WebSocket chats with a TCP client', async () => {
  await chat(`ws://127.0.0.1:${ports.http}/ws-xmpp`, 'websocket', 'websocket.png');
});

test('Strophe.js over BOSH (cross-origin) chats with a TCP client', async () => {
  await chat(`http://127.0.0.1:${ports.http}/http-bind`, 'bosh', 'bosh.png');
});

test('Converse.js creates, joins and chats in a MUC room with a TCP occupant', async () => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const room = 'lounge@conference.localhost';
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    const consoleLog = [];
    page.on('console', (m) => consoleLog.push(m.type() + ': ' + m.text()));
    page.on('requestfailed', (r) => consoleLog.push('request failed: ' + r.url()));
    const service = `ws://127.0.0.1:${ports.http}/ws-xmpp`;
    await page.goto(`http://127.0.0.1:${ports.page}/converse.html?service=${encodeURIComponent(service)}` +
      `&jid=alice@localhost/converse&password=alice-secret&room=${room}&nick=Alice`);
    // Converse joins, which creates the room; its chat area appears.
    try {
      await page.waitForSelector('converse-muc textarea', { timeout: 30000 });
    } catch (e) {
      mkdirSync(join(here, 'artifacts'), { recursive: true });
      await page.screenshot({ path: join(here, 'artifacts', 'converse-failed.png') });
      throw new Error(e.message + '\nconsole:\n' + consoleLog.slice(-40).join('\n') + '\nerrors: ' + errors.join('\n'));
    }
    // A TCP client joins the same room and sees Alice in it.
    const bob = new TcpClient(ports.c2s);
    await bob.login('bob', 'bob-secret', 'tcp-muc');
    bob.send(`<presence to='${room}/Bob'><x xmlns='http://jabber.org/protocol/muc'/></presence>`);
    await bob.until(`from='${room}/Alice'`, 15000);
    await bob.until('<subject', 15000);
    // Bob speaks; Converse shows it.
    bob.send(`<message to='${room}' type='groupchat' id='g1'><body>hello from bob</body></message>`);
    await page.waitForFunction(() => document.body.innerText.includes('hello from bob'), null, { timeout: 15000 });
    // Alice types in Converse; Bob gets it from her occupant JID.
    await page.fill('converse-muc textarea', 'hello from converse');
    await page.press('converse-muc textarea', 'Enter');
    const got = await bob.until('hello from converse', 15000);
    assert.match(got, new RegExp(`from=['"]${room}/Alice['"]`));
    mkdirSync(join(here, 'artifacts'), { recursive: true });
    await page.screenshot({ path: join(here, 'artifacts', 'converse-muc.png') });
    assert.deepEqual(errors, []);
    bob.close();
  } finally {
    await browser.close();
  }
});
