-- Deterministic sample data (no randomness: every build is identical).
CREATE TABLE customers (
    customer_id     INTEGER PRIMARY KEY,
    name            VARCHAR NOT NULL,
    email           VARCHAR NOT NULL UNIQUE,
    region          VARCHAR NOT NULL,
    signup_date     DATE NOT NULL,
    account_manager VARCHAR NOT NULL
);
COMMENT ON TABLE customers IS 'People and companies who bought from the shop';
COMMENT ON COLUMN customers.region IS 'Sales region: EU, US or APAC';
COMMENT ON COLUMN customers.account_manager IS 'Username of the employee who manages this customer account';
COMMENT ON COLUMN customers.email IS 'Contact email address of the customer';

INSERT INTO customers
SELECT i,
       'Customer ' || i,
       'customer' || i || '@example.test',
       ['EU', 'US', 'APAC'][1 + i % 3],
       DATE '2022-01-01' + (i * 7 % 900)::INTEGER,
       ['alice', 'bob', 'carol'][1 + (i // 3) % 3]
FROM range(1, 2001) t(i);

CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    category   VARCHAR NOT NULL,
    price      DECIMAL(10, 2) NOT NULL
);
COMMENT ON TABLE products IS 'Product catalogue with list prices';
COMMENT ON COLUMN products.price IS 'List price in EUR';

INSERT INTO products
SELECT i,
       ['Lamp', 'Chair', 'Desk', 'Mug', 'Notebook', 'Pen', 'Shelf', 'Rug'][1 + i % 8] || ' ' || i,
       ['lighting', 'furniture', 'furniture', 'kitchen', 'stationery', 'stationery', 'furniture', 'decor'][1 + i % 8],
       round(5 + (i * 37 % 400) + (i % 100) / 100.0, 2)
FROM range(1, 201) t(i);

CREATE TABLE orders (
    order_id    INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (customer_id),
    order_date  DATE NOT NULL,
    status      VARCHAR NOT NULL
);
COMMENT ON TABLE orders IS 'Customer orders; one row per order';
COMMENT ON COLUMN orders.status IS 'Order status: placed, shipped, delivered or cancelled';

INSERT INTO orders
SELECT i,
       1 + (i * 13 % 2000),
       DATE '2023-01-01' + (i % 700)::INTEGER,
       ['placed', 'shipped', 'delivered', 'delivered', 'delivered', 'cancelled'][1 + i % 6]
FROM range(1, 20001) t(i);

CREATE TABLE order_items (
    order_id   INTEGER NOT NULL REFERENCES orders (order_id),
    product_id INTEGER NOT NULL REFERENCES products (product_id),
    quantity   INTEGER NOT NULL,
    unit_price DECIMAL(10, 2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
COMMENT ON TABLE order_items IS 'Line items of each order (product, quantity, price paid)';

INSERT INTO order_items
SELECT o.order_id, p.product_id, 1 + (o.order_id + k) % 4, p.price
FROM orders o, range(0, 3) r(k), products p
WHERE p.product_id = 1 + (o.order_id * 7 + k * 31) % 200;

CREATE VIEW order_totals AS
SELECT o.order_id, o.customer_id, o.order_date, o.status,
       sum(i.quantity * i.unit_price) AS total
FROM orders o JOIN order_items i USING (order_id)
GROUP BY ALL;
COMMENT ON VIEW order_totals IS 'Orders with their total value in EUR';
