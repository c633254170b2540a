"""Operations: the call event stream and what subscribes to it (metrics, records, webhooks), the admin endpoint,
and log set-up. The core publishes events; nothing else in bridge/ knows what listens."""
