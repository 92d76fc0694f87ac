-- wrk script: cycles through the requests listed in $BENCH_REQUESTS, one per line,
-- "PATH" or "PATH TOKEN" (the token is sent as "Authorization: Bearer TOKEN").
-- Requests are formatted once per thread, so the script adds no per-request work beyond a lookup.
local lines = {}
for line in string.gmatch(os.getenv("BENCH_REQUESTS") or "/", "[^\n]+") do
  lines[#lines + 1] = line
end
local formatted = nil
local index = 0

local function format_all()
  formatted = {}
  for _, line in ipairs(lines) do
    local path, token = line:match("^(%S+)%s*(%S*)$")
    local headers = {}
    if token ~= "" then
      headers["Authorization"] = "Bearer " .. token
    end
    formatted[#formatted + 1] = wrk.format("GET", path, headers)
  end
end

function request()
  if formatted == nil then
    format_all()
  end
  index = index % #formatted + 1
  return formatted[index]
end
