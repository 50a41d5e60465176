-- codes.sold_at (0019) of the settlements already stored. codes and consumptions are
-- co-located by code on Citus, so the join runs on each shard.
UPDATE codes c SET sold_at = s.at
FROM (SELECT code, max(at) AS at FROM consumptions
      WHERE sale_kind = 'settlement' AND event_id IS NULL GROUP BY code) AS s
WHERE c.code = s.code;
