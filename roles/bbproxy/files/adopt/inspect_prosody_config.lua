-- Run by the bbproxy role (tasks/adopt.yml) on the target: `lua5.4 - FILE < this`.
-- Loads a Prosody configuration file with Prosody's own parser (core.configmanager, from the
-- installed package) and prints, as JSON, its global options and, per host, the component
-- module, the option names and the host's own modules_enabled. Exit 1 (reason on stderr) when
-- Prosody itself cannot load the file: then the role changes nothing.
local file = arg[1]
package.path = "/usr/lib/prosody/?.lua;" .. package.path
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
-- Prosody 13 names its modules "prosody.util.x"; its loader maps them to the installed files, as
-- Prosody's own startup does. Prosody 0.12 has no loader: both calls fail, nothing changes.
if not pcall(require, "prosody.loader") then
	pcall(require, "loader")
end
local configmanager = require "core.configmanager"
local json = require "util.json"
local ok, kind, err = configmanager.load(file)
if not ok then
	io.stderr:write(("Prosody cannot load %s (%s): %s\n"):format(file, tostring(kind), tostring(err)))
	os.exit(1)
end
local function plain(value)
	local t = type(value)
	if t == "nil" then return nil end
	if t == "string" or t == "number" or t == "boolean" then return value end
	if t == "table" then
		local out, ok_all = {}, true
		for k, v in pairs(value) do
			local p = plain(v)
			if p == nil then ok_all = false end
			out[k] = p
		end
		return ok_all and out or tostring(value)
	end
	return tostring(value)
end
local config = configmanager.getconfig()
local result = { global = {}, hosts = {} }
for option, value in pairs(config["*"] or {}) do
	result.global[option] = plain(value)
end
for host, options in pairs(config) do
	if host ~= "*" then
		local keys = {}
		for option in pairs(options) do keys[#keys + 1] = option end
		table.sort(keys)
		result.hosts[host] = {
			component_module = rawget(options, "component_module") or json.null,
			modules_enabled = plain(rawget(options, "modules_enabled")) or json.null,
			options = keys,
		}
	end
end
print(json.encode(result))
