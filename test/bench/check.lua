-- wrk script of the benchmark (test/bench/run.ts): counts responses that are not `200` with the
-- expected body (passed after `--`), and prints the count and the first such response in done().
-- Defining response() makes wrk hand every body to Lua: measured at about 0.5 us of wrk CPU per
-- request (11.7 against 11.2), a small price for checking every response.
local threads = {}
function setup(thread) table.insert(threads, thread) end

expected = ""
bad = 0
first = ""
function init(args) expected = args[1] or "" end

function response(status, headers, body)
  if status ~= 200 or body ~= expected then
    bad = bad + 1
    if first == "" then first = status .. " " .. string.sub(body or "", 1, 120) end
  end
end

function done(summary, latency, requests)
  local n, f = 0, ""
  for _, t in ipairs(threads) do
    n = n + t:get("bad")
    if f == "" then f = t:get("first") end
  end
  io.write(string.format("CHECK bad=%d first=%q\n", n, f))
end
