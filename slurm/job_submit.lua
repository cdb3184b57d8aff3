--[[
scratch-stage: submit-time check of dataset requests (Slurm job_submit/lua plugin).

Install: copy to job_submit.lua in the directory of slurm.conf on the slurmctld host
(Slurm only looks there, and only under that name), add `JobSubmitPlugins=lua` to
slurm.conf and run `scontrol reconfigure`. slurmctld reloads the script by itself when
the file changes. Publish the catalog it reads, e.g. from a timer on the controller:

    scratch-stage catalog --publish /etc/scratch-stage/catalog.txt

A job asks for datasets with the comment token `datasets:a,b` (anywhere in --comment) or,
with the SPANK plugin, `--datasets=a,b` (it reaches this script as the string
"DATASETS=a,b" in job_desc.spank_job_env). A submission is rejected, with the reason
shown by sbatch/srun/salloc, when a requested name is malformed, unknown to the catalog,
or restricted to Unix groups the job's user is in none of. Names given only through
--datasets are appended to the comment as `datasets:...`, so queued-job demand
(`squeue -o %k`) sees them.

This runs inside slurmctld: it never blocks all submissions because of its own trouble.
A missing or unreadable catalog, or any internal error, lets the job through (logged to
slurmctld's log); the prolog on the node checks every request again anyway.
--]]

-- Settings -------------------------------------------------------------------------------

-- The catalog written by `scratch-stage catalog --publish PATH`.
local CATALOG_PATH = "/etc/scratch-stage/catalog.txt"
local CATALOG_HEADER = "# scratch-stage catalog v1"
-- Without LuaFileSystem (Lua 5.1 has no stat()), the catalog is reread at most this often.
local CATALOG_RECHECK_SECONDS = 15
-- /etc/passwd and /etc/group are reread at most this often.
local ACCOUNTS_RECHECK_SECONDS = 60
-- How many known datasets an "unknown dataset" message lists.
local MAX_LISTED = 10
-- Same limit as the prolog (scratch_stage/requests.py MAX_DATASETS_PER_JOB).
local MAX_DATASETS_PER_JOB = 32
-- Used to confirm a group refusal through NSS (LDAP/SSSD users are not in /etc/group).
local ID_COMMAND = "/usr/bin/id"

-- State kept between calls (slurmctld keeps one Lua state until the script changes) ----

scratch_stage_cache = scratch_stage_cache or {
    catalog = nil,          -- {names = {sorted}, groups = {name -> "*" | {group, ...}}}
    catalog_mtime = nil,    -- with lfs: mtime of the file the catalog was read from
    catalog_text = nil,     -- without lfs: the text it was parsed from
    catalog_checked = 0,    -- os.time() of the last look at the file
    catalog_problem = nil,  -- the problem last logged (logged once until it changes)
    accounts = nil,         -- {users = {uid -> {name, gid}}, groups = {name -> {gid, members}}}
    accounts_checked = 0,
}
local cache = scratch_stage_cache

local have_lfs, lfs = pcall(require, "lfs")
if not have_lfs then
    lfs = nil
end

-- Small helpers ----------------------------------------------------------------------------

local function log_info(msg)
    slurm.log_info("%s", "scratch-stage: " .. msg)
end

local function log_error(msg)
    slurm.log_error("%s", "scratch-stage: " .. msg)
end

local function split(text, sep)
    -- Every field, empty ones included ("a,,b" -> {"a", "", "b"}), like Python's split.
    local out, start = {}, 1
    while true do
        local i = string.find(text, sep, start, true)
        if not i then
            table.insert(out, string.sub(text, start))
            return out
        end
        table.insert(out, string.sub(text, start, i - 1))
        start = i + 1
    end
end

local function strip(text)
    return (string.gsub(text, "^%s*(.-)%s*$", "%1"))
end

local function shown(text)
    -- A user's entry, quoted, printable and short, for a message.
    local s = string.gsub(text, "[^%w%p ]", "?")
    if #s > 40 then
        s = string.sub(s, 1, 40) .. "..."
    end
    return "'" .. s .. "'"
end

-- The DESIGN's dataset name: [A-Za-z0-9][A-Za-z0-9._+-]{0,127}
local function valid_name(name)
    local n = #name
    if n < 1 or n > 128 then
        return false
    end
    if not string.find(string.sub(name, 1, 1), "^[A-Za-z0-9]$") then
        return false
    end
    return string.find(name, "[^A-Za-z0-9._+%-]") == nil
end

-- The catalog --------------------------------------------------------------------------------

local function parse_catalog(text)
    -- -> catalog or nil, problem
    local lines = split(text, "\n")
    if strip(lines[1] or "") ~= CATALOG_HEADER then
        return nil, "first line is not '" .. CATALOG_HEADER .. "'"
    end
    local names, groups = {}, {}
    for i = 2, #lines do
        local line = string.gsub(lines[i], "\r$", "")
        if line ~= "" and string.sub(line, 1, 1) ~= "#" then
            local name, allowed = string.match(line, "^([^\t]+)\t(.*)$")
            if not name then
                name, allowed = line, "*"
            end
            name = strip(name)
            allowed = strip(allowed)
            if valid_name(name) and groups[name] == nil then
                if allowed == "*" then
                    groups[name] = "*"
                else
                    local list = {}
                    for _, g in ipairs(split(allowed, ",")) do
                        g = strip(g)
                        if g ~= "" then
                            table.insert(list, g)
                        end
                    end
                    groups[name] = list
                end
                table.insert(names, name)
            end
        end
    end
    table.sort(names)
    return {names = names, groups = groups}
end

local function catalog_problem(problem)
    -- Fail open: log the problem once (until it changes), accept jobs meanwhile.
    if cache.catalog_problem ~= problem then
        log_error(problem .. "; dataset requests are not checked at submission until it is fixed")
        cache.catalog_problem = problem
    end
    cache.catalog, cache.catalog_mtime, cache.catalog_text = nil, nil, nil
    return nil
end

local function read_file(path)
    local f, err = io.open(path, "r")
    if not f then
        return nil, err
    end
    local text = f:read("*a")
    f:close()
    if not text then
        return nil, path .. ": read failed"
    end
    return text
end

local function load_catalog()
    -- -> catalog, or nil when it is missing or unusable (the caller accepts the job)
    local now = os.time()
    local mtime
    if lfs then
        mtime = lfs.attributes(CATALOG_PATH, "modification")
        if mtime and cache.catalog and mtime == cache.catalog_mtime then
            return cache.catalog
        end
    elseif cache.catalog and now - cache.catalog_checked < CATALOG_RECHECK_SECONDS then
        return cache.catalog
    end
    cache.catalog_checked = now
    local text, err = read_file(CATALOG_PATH)
    if not text then
        return catalog_problem("cannot read the catalog " .. tostring(err))
    end
    if not lfs and cache.catalog and text == cache.catalog_text then
        return cache.catalog
    end
    local catalog, problem = parse_catalog(text)
    if not catalog then
        return catalog_problem("catalog " .. CATALOG_PATH .. ": " .. problem)
    end
    if cache.catalog_problem then
        log_info("catalog " .. CATALOG_PATH .. " is readable again")
        cache.catalog_problem = nil
    end
    cache.catalog, cache.catalog_mtime, cache.catalog_text = catalog, mtime, text
    log_info(string.format("loaded %d dataset(s) from %s", #catalog.names, CATALOG_PATH))
    return catalog
end

-- Users and groups -----------------------------------------------------------------------

local function load_accounts()
    local now = os.time()
    if cache.accounts and now - cache.accounts_checked < ACCOUNTS_RECHECK_SECONDS then
        return cache.accounts
    end
    local users, groups = {}, {}
    local text = read_file("/etc/passwd") or ""
    for _, line in ipairs(split(text, "\n")) do
        local f = split(line, ":")
        local uid, gid = tonumber(f[3] or ""), tonumber(f[4] or "")
        if uid and gid and users[uid] == nil then
            users[uid] = {name = f[1], gid = gid}
        end
    end
    text = read_file("/etc/group") or ""
    for _, line in ipairs(split(text, "\n")) do
        local f = split(line, ":")
        local gid = tonumber(f[3] or "")
        if gid and groups[f[1]] == nil then
            local members = {}
            for _, m in ipairs(split(f[4] or "", ",")) do
                members[strip(m)] = true
            end
            groups[f[1]] = {gid = gid, members = members}
        end
    end
    cache.accounts = {users = users, groups = groups}
    cache.accounts_checked = now
    return cache.accounts
end

local function in_group_files(accounts, user, gid, group)
    local g = accounts.groups[group]
    if not g then
        return false
    end
    return (gid ~= nil and g.gid == gid) or (user ~= nil and g.members[user] == true)
end

local function nss_groups(who)
    -- The user's group names from NSS (`id -Gn`), or nil when that fails.
    local p = io.popen(ID_COMMAND .. " -Gn -- '" .. string.gsub(who, "'", "") .. "' 2>/dev/null")
    if not p then
        return nil
    end
    local out = p:read("*a") or ""
    p:close()
    local set, any = {}, false
    for g in string.gmatch(out, "%S+") do
        set[g] = true
        any = true
    end
    if not any then
        return nil
    end
    return set
end

-- -> true, false, or nil (could not tell: the caller lets the job through)
local function user_may_use(uid, gid, user_name, allowed, nss_memo)
    if uid == 0 then
        return true
    end
    if #allowed == 0 then
        return false
    end
    local accounts = load_accounts()
    local entry = accounts.users[uid]
    local user = user_name or (entry and entry.name)
    gid = gid or (entry and entry.gid)
    for _, group in ipairs(allowed) do
        if in_group_files(accounts, user, gid, group) then
            return true
        end
    end
    -- Not in the local files: ask NSS (directory users and groups) before refusing.
    if nss_memo.groups == nil then
        nss_memo.groups = nss_groups(user or tostring(uid)) or false
    end
    if not nss_memo.groups then
        return nil
    end
    for _, group in ipairs(allowed) do
        if nss_memo.groups[group] then
            return true
        end
    end
    return false
end

-- Requests -------------------------------------------------------------------------------

local function comment_entries(comment)
    local entries = {}
    for word in string.gmatch(comment or "", "%S+") do
        if string.sub(word, 1, 9) == "datasets:" then
            for _, e in ipairs(split(string.sub(word, 10), ",")) do
                table.insert(entries, e)
            end
        end
    end
    return entries
end

local function spank_value(spank_env)
    -- The --datasets value from job_desc.spank_job_env (a table indexed from 0), or nil.
    if type(spank_env) ~= "table" then
        return nil
    end
    local value
    for _, item in pairs(spank_env) do
        if type(item) == "string" and string.sub(item, 1, 9) == "DATASETS=" then
            value = string.sub(item, 10)
        end
    end
    return value
end

local function spank_entries(value)
    local entries = {}
    if value and strip(value) ~= "" then
        for _, e in ipairs(split(value, ",")) do
            table.insert(entries, strip(e))
        end
    end
    return entries
end

local function known_list(catalog)
    local n = #catalog.names
    if n == 0 then
        return "none"
    end
    local shown_names = {}
    for i = 1, math.min(n, MAX_LISTED) do
        table.insert(shown_names, catalog.names[i])
    end
    local text = table.concat(shown_names, ", ")
    if n > MAX_LISTED then
        text = text .. string.format(", ... %d more", n - MAX_LISTED)
    end
    return text
end

-- -> list of problems (strings) for ENTRIES, the names requested (deduplicated)
local function check_entries(entries, catalog, who)
    local problems, names, seen = {}, {}, {}
    local nss_memo = {}
    for _, entry in ipairs(entries) do
        if not valid_name(entry) then
            if entry == "" then
                table.insert(problems, "scratch-stage: empty dataset name in the request")
            else
                table.insert(problems, "scratch-stage: malformed dataset name " .. shown(entry)
                    .. " (allowed: letters, digits, '.', '_', '+', '-'; starting with a letter"
                    .. " or digit; at most 128 characters)")
            end
        elseif not seen[entry] then
            seen[entry] = true
            table.insert(names, entry)
            local allowed = catalog.groups[entry]
            if allowed == nil then
                table.insert(problems, "scratch-stage: unknown dataset " .. shown(entry)
                    .. " (known: " .. known_list(catalog) .. ")")
            elseif allowed ~= "*" then
                local ok = user_may_use(who.uid, who.gid, who.name, allowed, nss_memo)
                if ok == nil then
                    log_info(string.format("cannot resolve the groups of uid %s; not checking"
                        .. " access to %s at submission", tostring(who.uid), entry))
                elseif not ok then
                    local entry_user = load_accounts().users[who.uid]
                    who.name = who.name or (entry_user and entry_user.name)
                    local groups = #allowed > 0 and table.concat(allowed, ", ") or "(nobody)"
                    table.insert(problems, "scratch-stage: dataset " .. shown(entry)
                        .. " is restricted to the groups " .. groups .. " and user "
                        .. (who.name or tostring(who.uid)) .. " is in none of them")
                end
            end
        end
    end
    if #names > MAX_DATASETS_PER_JOB then
        table.insert(problems, string.format(
            "scratch-stage: %d datasets requested, at most %d per job", #names,
            MAX_DATASETS_PER_JOB))
    end
    return problems, names
end

local function number_or_nil(v)
    v = tonumber(v)
    -- NO_VAL (0xfffffffe) and INFINITE (0xffffffff) mean "not set"
    if v == nil or v >= 4294967294 then
        return nil
    end
    return v
end

local function reject(problems)
    local shown_problems = {}
    for i = 1, math.min(#problems, 5) do
        table.insert(shown_problems, problems[i])
    end
    if #problems > 5 then
        table.insert(shown_problems, string.format("scratch-stage: ... and %d more problem(s)",
            #problems - 5))
    end
    slurm.log_user("%s", table.concat(shown_problems, "\n"))
    return slurm.ERROR
end

local function check_submit(job_desc, submit_uid)
    local comment = job_desc.comment
    local from_comment = comment_entries(comment)
    local from_spank = spank_entries(spank_value(job_desc.spank_job_env))
    if #from_comment == 0 and #from_spank == 0 then
        return slurm.SUCCESS
    end
    local catalog = load_catalog()
    if not catalog then
        return slurm.SUCCESS
    end
    local who = {
        uid = number_or_nil(job_desc.user_id) or submit_uid,
        gid = number_or_nil(job_desc.group_id),
        name = job_desc.user_name,
    }
    local entries = {}
    for _, e in ipairs(from_comment) do
        table.insert(entries, e)
    end
    for _, e in ipairs(from_spank) do
        table.insert(entries, e)
    end
    local problems = check_entries(entries, catalog, who)
    if #problems > 0 then
        log_info(string.format("refused a job of uid %s: %s", tostring(who.uid),
            table.concat(problems, "; ")))
        return reject(problems)
    end
    -- Names given only through --datasets go into the comment for queued-job demand.
    local in_comment, missing = {}, {}
    for _, e in ipairs(from_comment) do
        in_comment[e] = true
    end
    for _, e in ipairs(from_spank) do
        if not in_comment[e] then
            in_comment[e] = true
            table.insert(missing, e)
        end
    end
    if #missing > 0 then
        local token = "datasets:" .. table.concat(missing, ",")
        if comment == nil or strip(comment) == "" then
            job_desc.comment = token
        else
            job_desc.comment = comment .. " " .. token
        end
    end
    return slurm.SUCCESS
end

local function check_modify(job_desc, job_rec, modify_uid)
    -- Only a new comment can change the request of an existing job.
    local comment = job_desc.comment
    local entries = comment_entries(comment)
    if #entries == 0 then
        return slurm.SUCCESS
    end
    local catalog = load_catalog()
    if not catalog then
        return slurm.SUCCESS
    end
    local uid = job_rec and number_or_nil(job_rec.user_id) or modify_uid
    local who = {uid = uid, gid = job_rec and number_or_nil(job_rec.group_id), name = nil}
    local problems = check_entries(entries, catalog, who)
    if #problems > 0 then
        log_info(string.format("refused a modification by uid %s: %s", tostring(modify_uid),
            table.concat(problems, "; ")))
        return reject(problems)
    end
    return slurm.SUCCESS
end

-- Slurm's entry points: any error of this script lets the job through -------------------------

function slurm_job_submit(job_desc, part_list, submit_uid)
    local ok, rc = pcall(check_submit, job_desc, submit_uid)
    if ok then
        return rc
    end
    log_info("internal error, job accepted unchecked: " .. tostring(rc))
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    local ok, rc = pcall(check_modify, job_desc, job_rec, modify_uid)
    if ok then
        return rc
    end
    log_info("internal error, modification accepted unchecked: " .. tostring(rc))
    return slurm.SUCCESS
end

log_info("job_submit.lua loaded (catalog " .. CATALOG_PATH .. ")")
return slurm.SUCCESS
