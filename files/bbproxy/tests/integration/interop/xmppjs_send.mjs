// Send one XMPP message with xmpp.js (@xmpp/client from npm, Node's TLS = OpenSSL).
//
//   node xmppjs_send.mjs HOST PORT DOMAIN USER TO BODY [--direct-tls]   (password: env XMPP_PASSWORD)
//
// XMPPJS_MODULES is the pinned install (.interop/node_modules); the CA comes from
// NODE_EXTRA_CA_CERTS. XMPPJS_TLS_VERSION (e.g. TLSv1) holds Node's TLS at that version through
// its documented defaults (tls.DEFAULT_MIN_VERSION/MAX_VERSION/CIPHERS): Node's CLI has
// --tls-min-v1.0 but no --tls-max-v1.0. Exit 0 once the server answered a ping sent after the
// message.
//
// Direct TLS: xmpp.js verifies the certificate against the host of its service URI and takes no
// separate server name, so the URI names DOMAIN and dns.lookup answers HOST for it (what a hosts
// file entry would do; STARTTLS needs none of this: it checks against the XMPP domain).
import dns from "node:dns";
import path from "node:path";
import tls from "node:tls";
import { pathToFileURL } from "node:url";

const entry = path.join(process.env.XMPPJS_MODULES, "@xmpp", "client", "index.js");
const { client, xml } = await import(pathToFileURL(entry).href);

const [host, port, domain, user, to, body, ...rest] = process.argv.slice(2);
const directTls = rest.includes("--direct-tls");
const pinned = process.env.XMPPJS_TLS_VERSION;
if (pinned) {
  tls.DEFAULT_MIN_VERSION = pinned;
  tls.DEFAULT_MAX_VERSION = pinned;
  tls.DEFAULT_CIPHERS = "DEFAULT:@SECLEVEL=0";
}
if (directTls) {
  const lookup = dns.lookup;
  dns.lookup = (name, options, callback) =>
    name === domain ? lookup(host, options, callback) : lookup(name, options, callback);
}
const xmpp = client({
  service: directTls ? `xmpps://${domain}:${port}` : `xmpp://${host}:${port}`,
  domain,
  username: user,
  password: process.env.XMPP_PASSWORD,
  resource: "xmppjs",
});
xmpp.on("error", (err) => {
  console.log(`FAIL xmpp.js: ${err.condition || err.message || err}`);
  process.exit(1);
});
const timer = setTimeout(() => {
  console.log("FAIL xmpp.js: timed out");
  process.exit(1);
}, 20000);

xmpp.on("online", async () => {
  const socket = xmpp.socket && xmpp.socket.socket;
  const protocol = socket instanceof tls.TLSSocket ? socket.getProtocol() : null;
  if (!protocol) {
    console.log("FAIL xmpp.js: online without TLS");
    process.exit(1);
  }
  await xmpp.send(xml("message", { type: "chat", to }, xml("body", {}, body)));
  await xmpp.iqCaller.get(xml("ping", "urn:xmpp:ping"), domain);
  console.log(`OK xmpp.js protocol=${protocol} cipher=${socket.getCipher().name}`);
  clearTimeout(timer);
  await xmpp.stop();
  process.exit(0);
});
xmpp.start().catch((err) => {
  console.log(`FAIL xmpp.js: ${err.condition || err.message || err}`);
  process.exit(1);
});
