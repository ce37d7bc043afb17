"""Stream ingestion: ``lrurec consume`` applies events producers add to Redis Streams."""
