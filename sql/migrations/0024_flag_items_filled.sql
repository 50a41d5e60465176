-- refs.items (0023) of the flags stored before: the same items the rules now name
-- (service.core.flags.ITEMS). Each statement leaves a flag that has them already alone,
-- so running this again changes nothing. On Citus, flags and codes are co-located by
-- code (the joins run on each shard, with the reference table products); the
-- settlements' lines, keyed by setl_id, are read first (a materialised CTE) and joined
-- as an intermediate result. Citus calls no STABLE function on a column in an UPDATE, so
-- no jsonb_build_*/to_jsonb: a text becomes a JSON string by the immutable jsonb_object
-- (`jsonb_object(ARRAY['v', t]) -> 'v'`), and `'[]'::jsonb || s` an array of it.

-- STOCK_IMBALANCE: its item, which is also its code.
UPDATE flags
SET refs = jsonb_set(refs, '{items}', '[]'::jsonb || (jsonb_object(ARRAY['v', code]) -> 'v'))
WHERE kind = 'STOCK_IMBALANCE' AND NOT refs ? 'items';

-- EXCESS_PURCHASE: the item of its evidence, one person's purchases of one item
-- ('<keyed hash in hex>/<med_list_codg>': the hash holds no '/').
UPDATE flags
SET refs = jsonb_set(
        refs, '{items}',
        '[]'::jsonb || (jsonb_object(ARRAY['v', substr(source_id, strpos(source_id, '/') + 1)]) -> 'v'))
WHERE kind = 'EXCESS_PURCHASE' AND source_kind = 'person' AND strpos(source_id, '/') > 0
  AND NOT refs ? 'items';

-- PRODUCT_MISMATCH raised by a dispense: the item it billed (refs.billed), then the
-- pack's own item.
UPDATE flags f
SET refs = jsonb_set(
        f.refs, '{items}',
        '[]'::jsonb || (f.refs -> 'billed')
        || CASE WHEN p.med_list_codg IS NULL OR p.med_list_codg = f.refs ->> 'billed' THEN '[]'::jsonb
                ELSE jsonb_object(ARRAY['v', p.med_list_codg]) -> 'v' END)
FROM codes c LEFT JOIN products p ON p.product_id = c.product_id
WHERE f.kind = 'PRODUCT_MISMATCH' AND f.source_kind = 'event' AND f.refs ? 'billed'
  AND NOT f.refs ? 'items' AND c.code = f.code;

-- PRODUCT_MISMATCH raised by a settlement: the item its line billed (the line its
-- detail names: 'settlement <setl_id> line <n>: ...'), kept as refs.billed too, then the
-- pack's own item.
WITH billed AS MATERIALIZED (
    SELECT s.setl_id, (l ->> 'line_no')::int AS line_no, l -> 'med_list_codg' AS item,
           l ->> 'med_list_codg' AS item_text
    FROM settlements s, jsonb_array_elements(s.request -> 'lines') l
    WHERE s.setl_id IN (SELECT source_id FROM flags
                        WHERE kind = 'PRODUCT_MISMATCH' AND source_kind = 'settlement'
                          AND NOT refs ? 'items')
)
UPDATE flags f
SET refs = jsonb_set(
        jsonb_set(f.refs, '{billed}', b.item), '{items}',
        '[]'::jsonb || b.item
        || CASE WHEN p.med_list_codg IS NULL OR p.med_list_codg = b.item_text THEN '[]'::jsonb
                ELSE jsonb_object(ARRAY['v', p.med_list_codg]) -> 'v' END)
FROM billed b, codes c LEFT JOIN products p ON p.product_id = c.product_id
WHERE f.kind = 'PRODUCT_MISMATCH' AND f.source_kind = 'settlement' AND NOT f.refs ? 'items'
  AND b.setl_id = f.source_id
  AND b.line_no = substring(f.detail FROM '^settlement [^ ]+ line ([0-9]+):')::int
  AND jsonb_typeof(b.item) = 'string' AND c.code = f.code;
