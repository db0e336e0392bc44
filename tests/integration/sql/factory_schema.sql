-- Loaded into a hessra_proc template by tests/integration/test_fixture_factories.py.
CREATE TABLE public.orders (id int PRIMARY KEY, customer text NOT NULL);
ALTER TABLE public.orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.orders FORCE ROW LEVEL SECURITY;
CREATE POLICY orders_read ON public.orders FOR SELECT
    USING ((SELECT hessra_authz.authorized('orders', 'read')));
GRANT SELECT ON public.orders TO factory_app;
CREATE TABLE public.loaded (what text PRIMARY KEY);
INSERT INTO public.loaded VALUES ('sql file');
