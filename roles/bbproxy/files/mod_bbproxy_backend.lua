-- mod_bbproxy_backend: installed by the bbproxy Ansible role (bbproxy_prosody_tls_mode "backend_secure").
--
-- bbproxy terminates the client's TLS and relays the stream over a new plaintext connection to
-- Prosody on loopback. This module owns that loopback listener (service "bbproxy_backend",
-- options bbproxy_backend_ports / bbproxy_backend_interfaces) and hands each connection to the
-- normal c2s listener. Sessions that arrive this way
--   * are marked secure, so SASL and c2s_require_encryption treat them as encrypted;
--   * get no TLS context, so mod_tls neither offers nor accepts STARTTLS on them.
-- session.encrypted stays unset: there is no TLS on this socket, so no channel binding is offered.
-- mod_tls stays loaded, so server-to-server links keep STARTTLS.
--
-- With bbproxy_backend_proxy_protocol = true every connection must start with a PROXY protocol
-- v1 or v2 header (bbproxy's send_proxy_protocol); Prosody then sees the client's address
-- (logs, limits, bans). Connections without a valid header are closed.
--
-- Works with Prosody 0.12 and 13: mod_tls skips sessions whose ssl_ctx is false (and, on 13,
-- sessions that are secure).

module:set_global();

local portmanager = require "core.portmanager";

local proxy_protocol = module:get_option_boolean("bbproxy_backend_proxy_protocol", false);
local loopback = { ["127.0.0.1"] = true, ["::1"] = true, ["::ffff:127.0.0.1"] = true };
local max_header = 232; -- PROXY v2 with IPv6 addresses and room for TLVs; v1 is at most 107

-- Connections accepted on the backend port; weak keys, so closed connections are forgotten.
local from_proxy = setmetatable({}, { __mode = "k" });
local pending = setmetatable({}, { __mode = "k" });

local v2_signature = "\r\n\r\n\0\r\nQUIT\n";

local function u16(s, i)
	local hi, lo = s:byte(i, i + 1);
	return hi * 256 + lo;
end

local function ipv6_text(s, i)
	local groups = {};
	for g = 0, 7 do
		groups[g + 1] = ("%x"):format(u16(s, i + g * 2));
	end
	return table.concat(groups, ":");
end

-- Returns ip, port, rest when a whole header was read; nil when more bytes are needed;
-- false, reason when the bytes can't be a PROXY header.
local function parse_header(buffer)
	if buffer:sub(1, 6) == "PROXY " then
		local line_end = buffer:find("\r\n", 1, true);
		if not line_end then
			if #buffer > 107 then return false, "v1 header too long"; end
			return nil;
		end
		local line, rest = buffer:sub(1, line_end - 1), buffer:sub(line_end + 2);
		if line:match("^PROXY UNKNOWN") then
			return "", 0, rest;
		end
		local family, src, _, sport = line:match("^PROXY (TCP[46]) (%S+) (%S+) (%d+) %d+$");
		if not family then return false, "malformed v1 header"; end
		return src, tonumber(sport), rest;
	end
	if #buffer < 16 then
		if v2_signature:sub(1, #buffer) == buffer:sub(1, #v2_signature) then return nil; end
		if ("PROXY "):sub(1, #buffer) == buffer then return nil; end
		return false, "no PROXY header";
	end
	if buffer:sub(1, 12) ~= v2_signature then return false, "no PROXY header"; end
	local version_command, family = buffer:byte(13, 14);
	local length = u16(buffer, 15);
	if #buffer < 16 + length then return nil; end
	local rest = buffer:sub(17 + length);
	if version_command == 0x20 then -- LOCAL: a health check by the proxy itself
		return "", 0, rest;
	elseif version_command ~= 0x21 then
		return false, "unsupported v2 version/command";
	end
	if family == 0x11 and length >= 12 then
		local a, b, c, d = buffer:byte(17, 20);
		return ("%d.%d.%d.%d"):format(a, b, c, d), u16(buffer, 25), rest;
	elseif family == 0x21 and length >= 36 then
		return ipv6_text(buffer, 17), u16(buffer, 49), rest;
	end
	return "", 0, rest; -- UNSPEC or another family: keep the socket's address
end

local function c2s_listener()
	local service = portmanager.get_service("c2s");
	return service and service.listener;
end

local function hand_over(conn, ip, port, rest)
	local listener = c2s_listener();
	if not listener then
		module:log("error", "mod_c2s is not loaded; closing the connection from bbproxy");
		conn:close();
		return;
	end
	if ip and ip ~= "" then
		conn.peername, conn.peerport = ip, port; -- net.server_epoll (Prosody's default backend)
		if conn:ip() ~= ip then
			conn.ip = function () return ip; end
		end
	end
	from_proxy[conn] = true;
	conn:setlistener(listener);
	listener.onconnect(conn);
	if rest and rest ~= "" then
		listener.onincoming(conn, rest);
	end
end

local backend_listener = {};

function backend_listener.onconnect(conn)
	if not loopback[conn:ip()] then
		module:log("warn", "Refusing a backend connection from %s: only bbproxy on loopback may connect", conn:ip());
		conn:close();
		return;
	end
	if proxy_protocol then
		pending[conn] = "";
	else
		hand_over(conn);
	end
end

function backend_listener.onincoming(conn, data)
	local buffer = (pending[conn] or "") .. data;
	local ip, port, rest = parse_header(buffer);
	if ip == nil then
		if #buffer > max_header then
			ip, port = false, "header too long";
		else
			pending[conn] = buffer;
			return;
		end
	end
	pending[conn] = nil;
	if ip == false then
		module:log("warn", "Closing a backend connection: %s (is bbproxy's send_proxy_protocol set?)", port);
		conn:close();
		return;
	end
	module:log("debug", "PROXY header: client %s port %s", ip ~= "" and ip or "(unspecified)", port);
	hand_over(conn, ip, port, rest);
end

function backend_listener.ondisconnect(conn)
	pending[conn] = nil;
end

module:provides("net", {
	name = "bbproxy_backend";
	listener = backend_listener;
	default_port = 5200;
	default_interface = "127.0.0.1";
});

function module.add_host(host_module)
	-- Runs before mod_tls and mod_saslauth (both use the default priority 0).
	host_module:hook("stream-features", function (event)
		local session = event.origin;
		if session.type == "c2s_unauthed" and from_proxy[session.conn] then
			session.secure = true;
			session.ssl_ctx = false;
		end
	end, 1000);
end
