-- wrk script: count responses that are not complete (or not 200), report at the end.
incomplete = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  incomplete = 0
end

function response(status, headers, body)
  if status ~= 200 or headers["collection-complete"] ~= "?1" and headers["Collection-Complete"] ~= "?1" then
    incomplete = incomplete + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("incomplete")
  end
  io.write(string.format("incomplete_responses %d\n", total))
end
