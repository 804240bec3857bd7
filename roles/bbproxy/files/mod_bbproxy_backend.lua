-- mod_bbproxy_backend: installed by the bbproxy Ansible role (bbproxy_prosody_tls_mode "backend_secure").
--
-- bbproxy terminates the client's TLS and relays the stream over a new plaintext connection to
-- Prosody on loopback. For c2s sessions that arrive that way this module
--   * sets session.secure, so SASL and c2s_require_encryption treat them as encrypted, and
--   * sets session.ssl_ctx = false, so mod_tls neither offers nor accepts STARTTLS on them.
-- session.encrypted stays unset: there is no TLS on this socket, so no channel binding is offered.
-- mod_tls stays loaded, so server-to-server links keep STARTTLS.
--
-- A session came from bbproxy when its connection
--   * was accepted by mod_bbproxy_proxy (PROXY protocol listener) from a loopback peer, on one of
--     its bbproxy_proxy_ports (not bbproxy_proxy_starttls_ports: there the TLS is still to come), or
--   * is a plain c2s connection from loopback to one of bbproxy_backend_ports.
--
-- Works with Prosody 0.12 and 13: mod_tls skips sessions whose ssl_ctx is false (and, on 13,
-- sessions that are secure).

local backend_ports = module:get_option_set("bbproxy_backend_ports", { 522 });

local function is_loopback(ip)
	return type(ip) == "string" and (ip == "::1" or ip:match("^127%.") ~= nil or ip:match("^::ffff:127%.") ~= nil);
end

local function from_proxy(session)
	local conn = session.conn;
	if session.type ~= "c2s_unauthed" or not conn then
		return false;
	end
	if conn.ssl and conn:ssl() then
		return false;
	end
	-- Set by mod_bbproxy_proxy: the real peer, before the client's address from the header.
	if conn.bbproxy_proxy_peer ~= nil then
		-- A spliced client (bbproxy_proxy_starttls_ports): its TLS is Prosody's, by STARTTLS.
		return not conn.bbproxy_proxy_starttls and is_loopback(conn.bbproxy_proxy_peer);
	end
	local port = conn.serverport and tonumber(conn:serverport());
	return port ~= nil and backend_ports:contains(port) and is_loopback(conn:ip());
end

-- Runs before mod_tls and mod_saslauth (both use the default priority 0).
module:hook("stream-features", function (event)
	local session = event.origin;
	if from_proxy(session) then
		if not session.secure then
			session.log("debug", "Connection from bbproxy: TLS was done by the proxy, treating it as secure");
		end
		session.secure = true;
		session.ssl_ctx = false;
	end
end, 1000);
