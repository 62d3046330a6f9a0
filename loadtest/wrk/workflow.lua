-- wrk script: POST the 440-byte lead to /api/webhook/workflow.
--   wrk -t2 -c64 -d10s -s loadtest/wrk/workflow.lua http://127.0.0.1:8080 -- KEY WEBHOOK_ID [PACE_MS]
-- With PACE_MS each connection waits that many milliseconds after an answer
-- before its next request: a load below saturation, whose latency is the
-- server's own rather than the queue a saturating closed loop builds.
local key, webhook, pace = "tether_demo_key_5f1c2a9e", "wh_demo", 0

function init(args)
  key = args[1] or key
  webhook = args[2] or webhook
  pace = tonumber(args[3] or "0") or 0
  -- wrk looks for delay() after init: defined only when pacing, so an
  -- unpaced run sends the next request straight from the answer's callback.
  if pace > 0 then
    function delay()
      return pace
    end
  end
  local body = '{"webhookId":"' .. webhook .. '","source":"zillow","receivedVia":"premier-agent","lead":{"id":"zl_8f2c61d0-5d2e-4b8e-9c1e-7a9b3f2d1e44","name":"Alex Nguyen","email":"alex.nguyen@example.com","phone":"+14155551234","message":"Hi, I am interested in 1234 Market St #5. Is it still available for a viewing this weekend?","budget":{"min":850000,"max":1100000.00,"currency":"USD"},"tags":["buyer","pre-approved","vip"],"score":0.8712}}'
  wrk.method = "POST"
  wrk.path = "/api/webhook/workflow"
  wrk.body = body
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.headers["Content-Type"] = "application/json"
end

-- Count non-202 answers separately from wrk's own error count.
local bad = 0
function response(status, headers, body)
  if status ~= 202 then bad = bad + 1 end
end
