-- The cost of a request in US dollars, for models with a price (NULL otherwise).
ALTER TABLE requests ADD COLUMN cost_usd REAL;
