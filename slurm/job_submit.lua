--[[
scratch-stage: submit-time check of dataset requests (Slurm job_submit/lua plugin).

One file, two ways to install it on the slurmctld host:

* A site without a job_submit.lua of its own: copy this file as job_submit.lua into the
  directory of slurm.conf (Slurm only looks there, and only under that name), set
  `JobSubmitPlugins=lua` in slurm.conf and run `scontrol reconfigure`. It is the whole
  script.

* A site with its own job_submit.lua: copy this file next to it as
  scratch_stage_submit.lua and call it from the site's functions:

      package.path = "/etc/slurm/?.lua;" .. package.path  -- where the module lies
      local scratch_stage = require("scratch_stage_submit")

      function slurm_job_submit(job_desc, part_list, submit_uid)
          if scratch_stage.job_submit(job_desc, part_list, submit_uid) ~= slurm.SUCCESS then
              return slurm.ERROR
          end
          -- ... the site's own checks ...
          return slurm.SUCCESS
      end

      function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
          if scratch_stage.job_modify(job_desc, job_rec, part_list, modify_uid)
                  ~= slurm.SUCCESS then
              return slurm.ERROR
          end
          return slurm.SUCCESS
      end

  Required, it defines no global function and changes no global variable.
  `scratch_stage.configure{catalog = PATH}` changes where the catalog is read from.
  slurmctld rereads job_submit.lua when that file changes, not when the module does:
  `touch job_submit.lua` after updating the module.

The catalog is what `scratch-stage catalog --publish /etc/scratch-stage/catalog.txt`
writes (run it from a timer on the controller, after adding an image, and after changing
the membership of a group named in `access`): the dataset names and, for restricted
datasets, the uids and gids allowed, expanded from the configured groups when it was
published. No process is started and no user database is read inside slurmctld.

A job asks for datasets with the comment token `datasets:a,b` (anywhere in --comment) or,
with the SPANK plugin, `--datasets=a,b` (it reaches this script as the string
"DATASETS=a,b" in job_desc.spank_job_env). A submission is rejected, with the reason
shown by sbatch/srun/salloc, when a requested name is malformed, unknown to the catalog,
or restricted and the job's uid and gid are not among those allowed. Names given only
through --datasets are appended to the comment as `datasets:...`, so queued-job demand
(`squeue -o %k`) sees them.

This runs inside slurmctld: it never blocks all submissions because of its own trouble.
A missing or unreadable catalog, or any internal error, lets the job through (logged to
slurmctld's log); the prolog on the node checks every request again anyway, against the
user's groups at that time.

Works with Lua 5.1 to 5.4 (Debian's Slurm uses 5.1, RHEL's 5.4).
--]]

-- Loaded by Slurm as job_submit.lua, the chunk gets no argument; through require(), it
-- gets the module name.
local required_as = ...

-- Settings -------------------------------------------------------------------------------

-- The catalog written by `scratch-stage catalog --publish PATH`.
local CATALOG_PATH = "/etc/scratch-stage/catalog.txt"
-- Without LuaFileSystem (Lua 5.1 has no stat()), the catalog is reread at most this often.
local CATALOG_RECHECK_SECONDS = 15
local CATALOG_HEADER = "# scratch-stage catalog v2"
-- How many known datasets an "unknown dataset" message lists.
local MAX_LISTED = 10
-- Same limit as the prolog (scratch_stage/core/requests.py MAX_DATASETS_PER_JOB).
local MAX_DATASETS_PER_JOB = 32

local M = {}

local settings = {catalog = CATALOG_PATH, recheck_seconds = CATALOG_RECHECK_SECONDS}

-- State kept between calls (slurmctld keeps one Lua state until job_submit.lua changes).
local cache = {
    catalog = nil,          -- {names = {sorted}, access = {name -> "*" | allowed}}
    catalog_mtime = nil,    -- with lfs: mtime of the file the catalog was read from
    catalog_text = nil,     -- without lfs: the text it was parsed from
    catalog_checked = 0,    -- os.time() of the last look at the file
    catalog_problem = nil,  -- the problem last logged (logged once until it changes)
}

local have_lfs, lfs = pcall(require, "lfs")
if not have_lfs or type(lfs) ~= "table" then
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

-- A dataset name: [A-Za-z0-9][A-Za-z0-9._+-]{0,127}
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

local function id_set(text)
    -- "1000,1001" -> {[1000] = true, [1001] = true}; anything not a number is skipped.
    local set = {}
    for _, item in ipairs(split(text, ",")) do
        local n = tonumber(strip(item))
        if n and n >= 0 and n == math.floor(n) then
            set[n] = true
        end
    end
    return set
end

local function parse_access(fields)
    -- The fields after the name: {"*"} or {"groups=a,b", "gids=..", "uids=.."}.
    if #fields == 0 or strip(fields[1]) == "*" then
        return "*"
    end
    local allowed = {groups = {}, gids = {}, uids = {}}
    for _, field in ipairs(fields) do
        local key, value = string.match(field, "^%s*(%a+)=(.*)$")
        if key == "groups" then
            for _, g in ipairs(split(value, ",")) do
                g = strip(g)
                if g ~= "" then
                    table.insert(allowed.groups, g)
                end
            end
        elseif key == "gids" then
            allowed.gids = id_set(value)
        elseif key == "uids" then
            allowed.uids = id_set(value)
        end
    end
    return allowed
end

local function parse_catalog(text)
    -- -> catalog or nil, problem
    local lines = split(text, "\n")
    if strip(lines[1] or "") ~= CATALOG_HEADER then
        return nil, "first line is not '" .. CATALOG_HEADER .. "' (publish it again with"
            .. " this version's `scratch-stage catalog --publish`)"
    end
    local names, access = {}, {}
    for i = 2, #lines do
        local line = string.gsub(lines[i], "\r$", "")
        if line ~= "" and string.sub(line, 1, 1) ~= "#" then
            local fields = split(line, "\t")
            local name = strip(table.remove(fields, 1))
            if valid_name(name) and access[name] == nil then
                access[name] = parse_access(fields)
                table.insert(names, name)
            end
        end
    end
    table.sort(names)
    return {names = names, access = access}
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
    local path = settings.catalog
    local now = os.time()
    local mtime
    if lfs then
        mtime = lfs.attributes(path, "modification")
        if mtime and cache.catalog and mtime == cache.catalog_mtime then
            return cache.catalog
        end
    elseif cache.catalog and now - cache.catalog_checked < settings.recheck_seconds then
        return cache.catalog
    end
    cache.catalog_checked = now
    local text, err = read_file(path)
    if not text then
        return catalog_problem("cannot read the catalog " .. tostring(err))
    end
    if not lfs and cache.catalog and text == cache.catalog_text then
        return cache.catalog
    end
    local catalog, problem = parse_catalog(text)
    if not catalog then
        return catalog_problem("catalog " .. path .. ": " .. problem)
    end
    if cache.catalog_problem then
        log_info("catalog " .. path .. " is readable again")
        cache.catalog_problem = nil
    end
    cache.catalog, cache.catalog_mtime, cache.catalog_text = catalog, mtime, text
    log_info(string.format("loaded %d dataset(s) from %s", #catalog.names, path))
    return catalog
end

-- Access ---------------------------------------------------------------------------------

-- -> true, false, or nil (could not tell: the caller lets the job through)
local function user_may_use(who, allowed)
    if who.uid == nil then
        return nil
    end
    if who.uid == 0 or allowed.uids[who.uid] then
        return true
    end
    -- The job's gid is the one munge authenticated (slurmctld refuses any other from a
    -- user), so a member whose primary group is allowed passes even when the group
    -- database could not list the users of that primary group at publish time.
    return who.gid ~= nil and allowed.gids[who.gid] == true
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

local function user_shown(who)
    -- The user's name for a message (Slurm resolves it; read only when refusing).
    local ok, name = pcall(who.name)
    if ok and type(name) == "string" and name ~= "" then
        return name
    end
    return "uid " .. tostring(who.uid)
end

-- -> list of problems (strings) for ENTRIES, the names requested (deduplicated)
local function check_entries(entries, catalog, who)
    local problems, names, seen = {}, {}, {}
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
            local allowed = catalog.access[entry]
            if allowed == nil then
                table.insert(problems, "scratch-stage: unknown dataset " .. shown(entry)
                    .. " (known: " .. known_list(catalog) .. ")")
            elseif allowed ~= "*" then
                local ok = user_may_use(who, allowed)
                if ok == nil then
                    log_info("no uid for a job; not checking access to " .. entry)
                elseif not ok then
                    local groups = #allowed.groups > 0 and table.concat(allowed.groups, ", ")
                        or "(nobody)"
                    table.insert(problems, "scratch-stage: dataset " .. shown(entry)
                        .. " is restricted to the groups " .. groups .. " and user "
                        .. user_shown(who) .. " is in none of them")
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
        uid = number_or_nil(job_desc.user_id) or number_or_nil(submit_uid),
        gid = number_or_nil(job_desc.group_id),
        name = function() return job_desc.user_name end,
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
    local who = {
        uid = job_rec and number_or_nil(job_rec.user_id) or number_or_nil(modify_uid),
        gid = job_rec and number_or_nil(job_rec.group_id),
        name = function() return job_rec and job_rec.user_name end,
    }
    local problems = check_entries(entries, catalog, who)
    if #problems > 0 then
        log_info(string.format("refused a modification by uid %s: %s", tostring(modify_uid),
            table.concat(problems, "; ")))
        return reject(problems)
    end
    return slurm.SUCCESS
end

-- The module's functions: any error of this code lets the job through -----------------------

function M.job_submit(job_desc, part_list, submit_uid)
    local ok, rc = pcall(check_submit, job_desc, submit_uid)
    if ok then
        return rc
    end
    log_info("internal error, job accepted unchecked: " .. tostring(rc))
    return slurm.SUCCESS
end

function M.job_modify(job_desc, job_rec, part_list, modify_uid)
    local ok, rc = pcall(check_modify, job_desc, job_rec, modify_uid)
    if ok then
        return rc
    end
    log_info("internal error, modification accepted unchecked: " .. tostring(rc))
    return slurm.SUCCESS
end

function M.configure(options)
    -- {catalog = PATH, recheck_seconds = N}; a bad value is logged and ignored.
    for key, value in pairs(options or {}) do
        if key == "catalog" and type(value) == "string" and string.sub(value, 1, 1) == "/" then
            settings.catalog = value
        elseif key == "recheck_seconds" and type(value) == "number" and value >= 0 then
            settings.recheck_seconds = value
        else
            log_error("configure: ignoring " .. tostring(key) .. " = " .. tostring(value)
                .. " (catalog takes an absolute path, recheck_seconds a number)")
        end
    end
    cache.catalog, cache.catalog_mtime, cache.catalog_text = nil, nil, nil
    cache.catalog_checked = 0
    return M
end

if required_as ~= nil then
    return M
end

-- Loaded by Slurm as job_submit.lua: Slurm's entry points --------------------------------------

function slurm_job_submit(job_desc, part_list, submit_uid)
    return M.job_submit(job_desc, part_list, submit_uid)
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return M.job_modify(job_desc, job_rec, part_list, modify_uid)
end

log_info("job_submit.lua loaded (catalog " .. settings.catalog .. ")")
return slurm.SUCCESS
