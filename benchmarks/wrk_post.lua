-- wrk -s benchmarks/wrk_post.lua: POST a small chat-completion body to every request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"stub-model","messages":[{"role":"user","content":"Say hello to row 42, please."}]}'
