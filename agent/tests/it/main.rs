//! kobo-agent integration tests, one binary: the LLM backends against the
//! fake LLM server.

mod llm;
