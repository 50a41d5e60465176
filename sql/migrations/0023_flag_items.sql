-- The catalogue items a flag names (refs.items: service.core.flags.ITEMS), which
-- GET /v1/flags?med_list_codg= finds flags by: STOCK_IMBALANCE its item, PRODUCT_MISMATCH
-- the item billed and the pack's own item, EXCESS_PURCHASE the item bought. Before, the
-- filter matched a flag's code, so it found STOCK_IMBALANCE only. A GIN index on that
-- array answers `(refs -> 'items') ? $1`; 0024 fills it for the flags already stored.
--
-- One statement: Citus propagates a DDL command to the shards by its text.
CREATE INDEX flags_items ON flags USING gin ((refs -> 'items'));
