-- wrk script: POST the image named by $IMAGE to the function.
local file = assert(io.open(os.getenv("IMAGE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*all")
wrk.headers["Content-Type"] = "application/octet-stream"
file:close()

local failures = 0
function response(status, headers, body)
  if status ~= 200 then failures = failures + 1 end
end
