-- NHSA-format uploads (POST /v1/nhsa) name the institution by its code on the national
-- medical-insurance platform (定点医药机构编码), not by our organisation id. At most one
-- organisation holds each code, so an upload maps to exactly one organisation.
ALTER TABLE orgs ADD COLUMN fixmedins_code text;
CREATE UNIQUE INDEX orgs_fixmedins_code ON orgs (fixmedins_code) WHERE fixmedins_code IS NOT NULL;
