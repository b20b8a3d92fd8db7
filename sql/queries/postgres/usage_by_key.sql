-- Usage per API key over the last 24 hours (the hours overlapping them):
-- requests, prompt and completion tokens as the LLM servers reported them,
-- and LLM time; the heaviest key first.
-- psql -X "$DATABASE_URL" -f sql/queries/postgres/usage_by_key.sql
SELECT u.key,
       k.name                                        AS key_name,
       sum(u.requests)                               AS requests,
       sum(u.prompt_tokens)                          AS prompt_tokens,
       sum(u.completion_tokens)                      AS completion_tokens,
       sum(u.prompt_tokens + u.completion_tokens)    AS total_tokens,
       round(sum(u.llm_ms) / 1000.0, 1)              AS llm_seconds
FROM usage u
LEFT JOIN api_keys k ON u.key = 'apikey:' || k.id
WHERE u.hour > extract(epoch FROM now()) * 1000 - 25 * 3600 * 1000
GROUP BY u.key, k.name
ORDER BY total_tokens DESC, u.key
LIMIT 50;
