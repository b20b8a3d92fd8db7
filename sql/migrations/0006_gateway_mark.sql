-- Gateway requests (jobs made by the OpenAI- and Ollama-compatible routes)
-- are marked with the route they came through ('/v1/chat/completions',
-- '/api/generate', …; NULL for other jobs), in the clear even when the job
-- is confidential, so the dashboard counts them without opening `request`.
ALTER TABLE jobs ADD COLUMN gateway TEXT;
