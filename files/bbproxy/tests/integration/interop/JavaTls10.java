// A Java JSSE client: STARTTLS (or direct TLS), SASL PLAIN, resource bind, one message.
//
//   java JavaTls10 HOST PORT DOMAIN USER TO BODY CAFILE PROTOCOL [--direct-tls]   (password: env XMPP_PASSWORD)
//
// The stand-in for Java 7 era devices: the TLS is the JDK's own (SSLSocket), pinned to PROTOCOL
// (e.g. TLSv1) with setEnabledProtocols, and trusting only CAFILE. The XMPP around it is the
// minimum by hand. Prints "OK protocol=... cipher=..." and exits 0 once the server answered a
// ping sent after the message (so the message was processed); "FAIL ..." and exit 1 otherwise.
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.Base64;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public final class JavaTls10 {
    private static final String STREAM_NS =
        "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'";

    private JavaTls10() {}

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String domain = args[2], user = args[3], to = args[4], body = args[5], cafile = args[6];
        String protocol = args[7];
        boolean directTls = args.length > 8 && args[8].equals("--direct-tls");
        String password = System.getenv("XMPP_PASSWORD");
        try {
            run(host, port, domain, user, password, to, body, cafile, protocol, directTls);
        } catch (Exception e) {
            System.out.println("FAIL " + e);
            System.exit(1);
        }
    }

    private static void run(String host, int port, String domain, String user, String password, String to,
                            String body, String cafile, String protocol, boolean directTls) throws Exception {
        Socket plain = new Socket();
        plain.connect(new InetSocketAddress(host, port), 5000);
        plain.setSoTimeout(10000);
        if (!directTls) {
            Xml xml = new Xml(plain.getInputStream(), plain.getOutputStream());
            xml.send(header(domain));
            String features = xml.readUntil("</stream:features>");
            if (!features.contains("<starttls")) throw new IllegalStateException("no <starttls/> offered");
            xml.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
            xml.readUntil("proceed");
            xml.readUntil(">");
        }
        SSLSocket tls = (SSLSocket) context(cafile).getSocketFactory().createSocket(plain, domain, port, true);
        tls.setEnabledProtocols(new String[] {protocol});
        SSLParameters params = tls.getSSLParameters();
        params.setEndpointIdentificationAlgorithm("HTTPS");  // check the certificate names DOMAIN
        if (directTls) params.setApplicationProtocols(new String[] {"xmpp-client"});
        tls.setSSLParameters(params);
        tls.startHandshake();
        String negotiated = tls.getSession().getProtocol() + " cipher=" + tls.getSession().getCipherSuite();
        Xml xml = new Xml(tls.getInputStream(), tls.getOutputStream());
        xml.send(header(domain));
        String features = xml.readUntil("</stream:features>");
        if (!features.contains("<mechanism>PLAIN</mechanism>")) {
            throw new IllegalStateException("no SASL PLAIN after TLS");
        }
        String plainAuth = Base64.getEncoder().encodeToString(
            ("\0" + user + "\0" + password).getBytes(StandardCharsets.UTF_8));
        xml.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + plainAuth + "</auth>");
        String answer = xml.readUntil("success", "failure");
        if (!answer.contains("success")) throw new IllegalStateException("SASL PLAIN failed");
        xml.send(header(domain));
        xml.readUntil("</stream:features>");
        xml.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                 + "<resource>java</resource></bind></iq>");
        Matcher jid = Pattern.compile("<jid>([^<]+)</jid>").matcher(xml.readUntil("</iq>"));
        if (!jid.find()) throw new IllegalStateException("no resource bound");
        xml.send("<message type='chat' to='" + to + "'><body>" + body + "</body></message>");
        xml.send("<iq type='get' id='ping1' to='" + domain + "'><ping xmlns='urn:xmpp:ping'/></iq>");
        // The whole start tag of the answer: Prosody writes its attributes in any order.
        String pong = xml.readUntil("id='ping1'", "id=\"ping1\"");
        pong = pong.substring(pong.lastIndexOf('<')) + xml.readUntil(">");
        if (!pong.contains("type='result'") && !pong.contains("type=\"result\"")) {
            throw new IllegalStateException("ping not answered with a result");
        }
        xml.send("</stream:stream>");
        tls.close();
        System.out.println("OK protocol=" + negotiated + " jid=" + jid.group(1));
    }

    private static String header(String domain) {
        return "<?xml version='1.0'?><stream:stream " + STREAM_NS + " to='" + domain + "' version='1.0'>";
    }

    private static SSLContext context(String cafile) throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (FileInputStream in = new FileInputStream(cafile)) {
            int n = 0;
            for (Certificate cert : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                store.setCertificateEntry("ca" + n++, cert);
            }
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(store);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(null, tmf.getTrustManagers(), null);
        return ctx;
    }

    /** Reads the stream as text until one of the markers shows up; no XML parser needed here. */
    private static final class Xml {
        private final InputStream in;
        private final OutputStream out;
        private final ByteArrayOutputStream seen = new ByteArrayOutputStream();

        Xml(InputStream in, OutputStream out) {
            this.in = in;
            this.out = out;
        }

        void send(String text) throws Exception {
            out.write(text.getBytes(StandardCharsets.UTF_8));
            out.flush();
        }

        String readUntil(String... markers) throws Exception {
            while (true) {
                String text = seen.toString(StandardCharsets.UTF_8);
                for (String marker : markers) {
                    int at = text.indexOf(marker);
                    if (at >= 0) {
                        // Keep what follows the marker for the next read.
                        byte[] rest = text.substring(at + marker.length()).getBytes(StandardCharsets.UTF_8);
                        seen.reset();
                        seen.write(rest);
                        return text.substring(0, at + marker.length());
                    }
                }
                if (text.contains("<stream:error")) throw new IllegalStateException("stream error: " + text);
                int b = in.read();
                if (b < 0) throw new IllegalStateException("connection closed waiting for " + markers[0]);
                seen.write(b);
            }
        }
    }
}
