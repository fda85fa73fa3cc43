-- wrk script: a signed 1599-byte GitHub push with a unique X-GitHub-Delivery per request.
-- GitHub signs only the body; see HOOKGATE_BENCH_SIGS below for a new body per request.
-- Usage: wrk -t1 -c64 -d10s -s loadtest/wrk/github.lua http://127.0.0.1:8080/hooks/github
local body = [==[{"ref":"refs/heads/main","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","repository":{"id":1296269,"node_id":"MDEwOlJlcG9zaXRvcnkxMjk2MjY5","name":"Hello-World","full_name":"octocat/Hello-World","private":false,"owner":{"login":"octocat","id":1,"type":"User","site_admin":false},"html_url":"https://github.com/octocat/Hello-World","description":"This your first repo!","fork":false,"default_branch":"main","topics":["octocat","atom","electron","api"],"visibility":"public"},"pusher":{"name":"octocat","email":"octocat@github.com"},"sender":{"login":"octocat","id":1,"type":"User","site_admin":false},"commits":[{"id":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","tree_id":"f9d2a07e9488b91af2641b26b9407fe22a451433","distinct":true,"message":"Update README.md with the latest instructions for running the test suite","timestamp":"2026-11-23T08:00:00Z","author":{"name":"Monalisa Octocat","email":"octocat@github.com","username":"octocat"},"committer":{"name":"GitHub","email":"noreply@github.com","username":"web-flow"},"added":["docs/guide.md"],"removed":[],"modified":["README.md","src/main.rs","src/lib.rs"]}],"head_commit":{"id":"59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5","message":"Update README.md","timestamp":"2026-11-23T08:00:00Z"},"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]==]
local prefix = string.format("%x-%x-", os.time(), math.random(1, 2^30))
-- HOOKGATE_BENCH_FIRST=N starts at request N + 1 (and body N), so that a second run
-- against the same journal (compare.sh's WARMUP) sends bodies the first did not.
local n = tonumber(os.getenv("HOOKGATE_BENCH_FIRST") or "") or 0
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "sha256=94ddfb78a859220c00d7947dc40ddbf9124e339e2eacfb0bcd1e5bb45112fb8e"
-- With HOOKGATE_BENCH_SIGS naming a file from loadtest/wrk/sign.py, request n sends body
-- number n (its padding starts with n as eight digits) with its own signature, so that
-- every request is a new signed body (hookgate takes a known body under a new id for a
-- duplicate: README, "Replay defence"). Past the file's count the bodies repeat.
local sigs, count = {}, 0
local sigs_file = os.getenv("HOOKGATE_BENCH_SIGS")
if sigs_file and sigs_file ~= "" then
  for line in io.lines(sigs_file) do
    count = count + 1
    sigs[count] = "sha256=" .. line
  end
end
local head, tail = body:match('^(.-"padding":")xxxxxxxx(.*)$')
request = function()
  n = n + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. n
  if count > 0 then
    local i = (n - 1) % count
    wrk.headers["X-Hub-Signature-256"] = sigs[i + 1]
    return wrk.format(nil, nil, nil, head .. string.format("%08d", i) .. tail)
  end
  return wrk.format()
end
-- With HOOKGATE_BENCH_LIMIT=N the run stops after N answers (to build a backlog of N).
local limit = tonumber(os.getenv("HOOKGATE_BENCH_LIMIT") or "")
if limit then
  local answered = 0
  response = function(status)
    answered = answered + 1
    if answered >= limit then wrk.thread:stop() end
  end
end
-- wrk's --latency stops at p99; compare.sh reads p99.9 from this line.
done = function(summary, latency, requests)
  io.write(string.format("Latency p99.9: %.2fms\n", latency:percentile(99.9) / 1000))
end
