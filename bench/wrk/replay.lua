-- Replay pre-generated requests with wrk: one line of the file per request, never reused.
--
--   wrk -t1 -c16 -d4s -s bench/wrk/replay.lua http://127.0.0.1:PORT/path -- FILE FIRST COUNT
--
-- Each line of FILE is the value of the Authorization header of one request ("-" for a
-- request without one, e.g. the free baseline). This thread sends lines FIRST+1 ..
-- FIRST+COUNT, each once; when they run out it stops (and says so in its report) rather
-- than send a credential twice. Run it with ONE thread: two threads would replay the same
-- lines.
--
-- Paced mode: if FARTHING_WRK_MEAN_DELAY_MS is set (> 0), each connection waits an
-- exponentially distributed think time with that mean before each request (wrk's delay(),
-- whole milliseconds, rounded at random so the mean is kept). With c connections and
-- latency L the offered rate is about c / (mean + L): a Poisson-like load below the peak.
--
-- done() prints one line "FARTHING {json}" with the counts and latency percentiles (us).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   if #threads > 1 then
      error("replay.lua: run wrk with -t1, so that no line is sent twice")
   end
end

function init(args)
   local path, first, count = args[1], tonumber(args[2]), tonumber(args[3])
   requests = {}
   local n, line_no = 0, 0
   for line in io.lines(path) do
      line_no = line_no + 1
      if line_no > first then
         if n >= count then break end
         n = n + 1
         local headers = {}
         if line ~= "-" then headers["Authorization"] = line end
         requests[n] = wrk.format(nil, nil, headers)
      end
   end
   total, used, exhausted = n, 0, 0
   rejected, first_rejected = 0, ""
   fallback = wrk.format(nil, "/healthz")
end

function request()
   if used >= total then
      exhausted = 1
      wrk.thread:stop()
      return fallback
   end
   used = used + 1
   return requests[used]
end

-- Not 200: counted, and the first one kept (status and body) to say why.
function response(status, _, body)
   if status ~= 200 then
      rejected = rejected + 1
      if first_rejected == "" then first_rejected = status .. " " .. (body or "") end
   end
end

local mean_delay = tonumber(os.getenv("FARTHING_WRK_MEAN_DELAY_MS") or "0") or 0
if mean_delay > 0 then
   function delay()
      local wait = -mean_delay * math.log(1 - math.random())
      return math.floor(wait + math.random())
   end
end

function done(summary, latency, _)
   local t = threads[1]
   local e = summary.errors
   io.write(string.format(
      'FARTHING {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
      '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
      '"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d,"used":%d,"available":%d,' ..
      '"exhausted":%d,"rejected":%d,"first_rejected":"%s"}\n',
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max,
      t:get("used"), t:get("total"), t:get("exhausted"), t:get("rejected"),
      ((t:get("first_rejected") or ""):sub(1, 300):gsub('[%c"\\]', " "))))
end
