-- managed by the bbproxy role (roles/bbproxy/files/mod_bbproxy_proxy.lua); local changes are overwritten.
--
-- mod_bbproxy_proxy: a loopback-only c2s listener that expects a PROXY protocol header (HAProxy's
-- proxy-protocol.txt, v1 text or v2 binary) in front of the XMPP stream.
--
-- bbproxy opens a new connection to Prosody for every client, so without help every session comes
-- from 127.0.0.1 and per-IP logs, limits and bans see a single user. With send_proxy_protocol on,
-- bbproxy names the client in a header; this module checks it, makes conn:ip() (where session.ip
-- comes from) answer the client's address, and hands the connection to mod_c2s as if the client
-- had connected directly. Debian 12's prosody-modules has no mod_net_proxy, hence this module.
--
-- Anyone who can open this port can claim any address: it binds to loopback unless told otherwise,
-- and refuses connections whose real peer is not a loopback address whatever the binding.
--
-- Two kinds of port, the same header:
--   * bbproxy_proxy_ports: bbproxy terminated the client's TLS and relays plaintext; the session is
--     treated as encrypted (mod_bbproxy_backend: secure, no STARTTLS).
--   * bbproxy_proxy_starttls_ports: bbproxy splices a modern client's own TLS to Prosody. After the
--     header bbproxy opens the stream, asks for STARTTLS and, after <proceed/>, relays the client's
--     ClientHello and everything after it: Prosody does TLS with the client end to end (channel
--     binding, its own TLS policy). Such connections are marked conn.bbproxy_proxy_starttls, so
--     mod_bbproxy_backend leaves them to mod_tls. (A header in front of direct TLS cannot work on
--     Prosody 0.12: LuaSocket reads past the header into the ClientHello, which luasec never sees.
--     Here nothing but the header and plaintext XML is read before Prosody starts TLS.)
--
-- Global section:
--   modules_enabled = { ...; "bbproxy_proxy" }
--   bbproxy_proxy_ports = { 5201 }
--   bbproxy_proxy_interfaces = { "127.0.0.1", "::1" }
--   bbproxy_proxy_starttls_ports = { 523 } -- none by default
--   bbproxy_proxy_starttls_interfaces = { "127.0.0.1", "::1" }
--   bbproxy_proxy_header_timeout = 10 -- seconds a new connection may take to send its header
--
-- Written against Prosody 0.12 and 13 (the same portmanager, listener and sessionmanager code) and
-- Lua 5.1-5.4 (no bit operators).

module:set_global();

local net = require "util.net";
local portmanager = require "core.portmanager";

local header_timeout = module:get_option_number("bbproxy_proxy_header_timeout", 10);

-- mod_c2s keeps its sessions in this shared table, keyed by connection (mod_admin_shell reads it too).
local c2s_sessions = module:shared("/*/c2s/sessions");

local V1_PREFIX = "PROXY ";
local V1_MAX = 107; -- longest line the spec allows, CRLF included
local V2_SIGNATURE = "\r\n\r\n\0\r\nQUIT\n";
local V2_MAX = 536; -- 16-byte fixed part + address block + TLVs; bbproxy's own decoder has the same bound
local V4_MAPPED = ("\0"):rep(10) .. "\255\255";
local V6_LOOPBACK = ("\0"):rep(15) .. "\1";

local pending = {}; -- conn -> bytes received before the header was complete

-- Packed IPv4 for an IPv4-mapped IPv6 address, so such clients are logged and limited as IPv4.
local function unmap(packed)
	if #packed == 16 and packed:sub(1, 12) == V4_MAPPED then
		return packed:sub(13);
	end
	return packed;
end

local function is_loopback(ip)
	local packed = type(ip) == "string" and net.pton(ip);
	if not packed then return false; end
	packed = unmap(packed);
	if #packed == 4 then return packed:byte(1) == 127; end
	return packed == V6_LOOPBACK;
end

local function u16(s, i)
	local hi, lo = s:byte(i, i + 1);
	return hi * 256 + lo;
end

-- The spec forbids leading zeroes ("confusion with octal numbers").
local function v1_port(text)
	if text ~= "0" and not text:match("^[1-9]%d?%d?%d?%d?$") then return nil; end
	local port = tonumber(text);
	return port <= 65535 and port or nil;
end

local function v1_address(text, size)
	local packed = net.pton(text); -- inet_pton: strict dotted quad / RFC 4291 text, no zone ids
	return packed and #packed == size and unmap(packed) or nil;
end

-- parse(buffer) -> nil (need more bytes) | false, reason | true, bytes used, ip or nil, port
-- A nil ip (v1 UNKNOWN, v2 LOCAL or a non-TCP family) means "keep the connection's own address".
local function parse(buf)
	local n = math.min(#buf, #V2_SIGNATURE);
	if buf:sub(1, n) == V2_SIGNATURE:sub(1, n) then
		if #buf < 16 then return nil; end
		local ver_cmd, family = buf:byte(13, 14);
		local length = u16(buf, 15);
		local command = ver_cmd % 16;
		if ver_cmd - command ~= 0x20 then return false, "v2: unsupported version"; end
		if command > 1 then return false, "v2: unknown command"; end
		if math.floor(family / 16) > 3 or family % 16 > 2 then return false, "v2: unknown address family"; end
		local used = 16 + length;
		if used > V2_MAX then return false, "v2: header longer than " .. V2_MAX .. " bytes"; end
		if #buf < used then return nil; end
		if command == 0 then return true, used; end -- LOCAL: a health check, no client behind it
		local block = buf:sub(17, used);
		if family == 0x11 then -- TCP over IPv4
			if length < 12 then return false, "v2: short IPv4 address block"; end
			return true, used, net.ntop(block:sub(1, 4)), u16(block, 9);
		elseif family == 0x21 then -- TCP over IPv6
			if length < 36 then return false, "v2: short IPv6 address block"; end
			return true, used, net.ntop(unmap(block:sub(1, 16))), u16(block, 33);
		end
		return true, used; -- UNSPEC, UDP, UNIX: the spec says to use the real endpoints
	end

	n = math.min(#buf, #V1_PREFIX);
	if buf:sub(1, n) ~= V1_PREFIX:sub(1, n) then return false, "not a PROXY protocol header"; end
	local eol = buf:find("\r\n", 1, true);
	if not eol or eol + 1 > V1_MAX then
		if #buf >= V1_MAX then return false, "v1: no CRLF in the first " .. V1_MAX .. " bytes"; end
		return nil;
	end
	local line = buf:sub(1, eol - 1);
	if line:find("[^\32-\126]") then return false, "v1: byte that is not printable ASCII"; end
	if line == "PROXY UNKNOWN" or line:sub(1, 14) == "PROXY UNKNOWN " then
		return true, eol + 1; -- "the receiver must ignore anything presented before the CRLF"
	end
	local proto, src, dst, sport, dport = line:match("^PROXY (TCP[46]) (%S+) (%S+) (%S+) (%S+)$");
	if not proto then return false, "v1: not PROXY TCP4|TCP6 src dst sport dport"; end
	local size = proto == "TCP4" and 4 or 16;
	local src_packed = v1_address(src, size);
	if not src_packed or not v1_address(dst, size) then return false, "v1: bad " .. proto .. " address"; end
	local port = v1_port(sport);
	if not port or not v1_port(dport) then return false, "v1: bad port"; end
	return true, eol + 1, net.ntop(src_packed), port;
end

-- Instance fields shadow the backend's methods: epoll and event keep them in a metatable, select
-- in per-connection closures. Fields like conn.peername are not enough: epoll rewrites them from
-- the socket (updatenames) when TLS starts.
local function set_client_address(conn, ip, port)
	conn.ip = function () return ip; end
	conn.port = function () return port; end
	conn.clientport = conn.port;
end

-- The listener of one kind of port: ``starttls`` says whether the client's TLS is still to come
-- (Prosody's, by STARTTLS) or was done by bbproxy.
local function proxy_listener(starttls)
	local listener = {};

	function listener.onconnect(conn)
		local peer = conn:ip();
		if not is_loopback(peer) then
			module:log("warn", "Closing a connection from %s: PROXY headers are only accepted from loopback", tostring(peer));
			conn:close();
			return;
		end
		pending[conn] = "";
		module:add_timer(header_timeout, function ()
			if pending[conn] then
				module:log("warn", "No complete PROXY header from %s within %gs, closing", peer, header_timeout);
				pending[conn] = nil;
				conn:close();
			end
		end);
	end

	function listener.onincoming(conn, data)
		local buf = pending[conn];
		if not buf then return; end -- refused or already closed
		buf = buf .. (data or "");
		local ok, used, ip, port = parse(buf);
		if ok == nil then
			pending[conn] = buf;
			return;
		end
		pending[conn] = nil;
		local peer = conn:ip();
		if not ok then
			module:log("warn", "Closing a connection from %s: bad PROXY header (%s)", tostring(peer), used);
			conn:close();
			return;
		end
		-- Looked up per connection so a reloaded mod_c2s is picked up.
		local c2s = portmanager.get_service("c2s");
		if not c2s then
			module:log("error", "mod_c2s is not loaded: closing the connection from %s", tostring(peer));
			conn:close();
			return;
		end
		-- For other modules (e.g. a trust module) that must check the real peer, not the client.
		conn.bbproxy_proxy_peer = peer;
		-- For mod_bbproxy_backend: TLS is still to come, Prosody's own (not done by bbproxy).
		conn.bbproxy_proxy_starttls = starttls or nil;
		if ip then set_client_address(conn, ip, port); end
		conn:setlistener(c2s.listener);
		c2s.listener.onconnect(conn);
		local session = c2s_sessions[conn];
		local log = session and session.log or function (...) return module:log(...); end;
		local what = starttls and "PROXY header, STARTTLS to follow" or "PROXY header";
		if ip then
			log("info", "Client address %s port %d (%s from %s)", ip, port, what, tostring(peer));
		else
			log("info", "%s from %s names no client: keeping the connection's own address", what, tostring(peer));
		end
		local rest = buf:sub(used + 1);
		if rest ~= "" then
			c2s.listener.onincoming(conn, rest);
		end
	end

	function listener.ondisconnect(conn)
		pending[conn] = nil;
	end
	listener.ondetach = listener.ondisconnect;
	return listener;
end

module:provides("net", {
	name = "bbproxy_proxy";
	listener = proxy_listener(false);
	default_port = 5201;
	private = true; -- without bbproxy_proxy_interfaces: local_interfaces (loopback), never "*"
});

module:provides("net", {
	name = "bbproxy_proxy_starttls";
	listener = proxy_listener(true);
	default_ports = {}; -- only where bbproxy_proxy_starttls_ports says
	private = true;
});
