"""The Gemini Batch API: request files and results, the SDK calls, the job journal, the resumable run."""
