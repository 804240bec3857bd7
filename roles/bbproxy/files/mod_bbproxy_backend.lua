-- mod_bbproxy_backend: installed by the bbproxy Ansible role (bbproxy_prosody_tls_mode "backend_secure").
--
-- bbproxy terminates the client's TLS and relays the stream over a new plaintext connection to
-- Prosody's c2s listener on loopback. For sessions arriving that way this module
--   * sets session.secure, so SASL and c2s_require_encryption treat them as encrypted, and
--   * sets session.ssl_ctx = false, so mod_tls neither offers nor accepts STARTTLS on them.
-- session.encrypted stays unset: there is no TLS on this socket, so no channel binding is offered.
-- mod_tls stays loaded, so server-to-server links keep STARTTLS.
-- Works with Prosody 0.12 and 13 (mod_tls returns early for ssl_ctx == false, and on 13 also for secure).

local backend_ports = module:get_option_set("bbproxy_backend_ports", { 5200 });
local loopback = { ["127.0.0.1"] = true, ["::1"] = true, ["::ffff:127.0.0.1"] = true };

local function from_proxy(session)
	local conn = session.conn;
	if session.type ~= "c2s_unauthed" or not conn or not conn.serverport then
		return false;
	end
	if conn.ssl and conn:ssl() then
		return false;
	end
	local port = tonumber(conn:serverport());
	return port ~= nil and backend_ports:contains(port) and loopback[conn:ip()] == true;
end

-- Runs before mod_tls and mod_saslauth (both use the default priority 0).
module:hook("stream-features", function (event)
	local session = event.origin;
	if from_proxy(session) then
		if not session.secure then
			session.log("debug", "Connection from bbproxy on the backend port: treating it as secure");
		end
		session.secure = true;
		session.ssl_ctx = false;
	end
end, 1000);
