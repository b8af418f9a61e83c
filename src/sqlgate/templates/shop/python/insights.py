"""Python endpoints: any logic that is awkward in SQL, still under the server's limits."""

from sqlgate import runtime


def customer_summary(customer_id: int) -> dict:
    rows = runtime.query(
        "SELECT c.name, c.region, count(t.order_id) AS orders, coalesce(sum(t.total), 0) AS revenue, "
        "max(t.order_date) AS last_order "
        "FROM customers c LEFT JOIN order_totals t USING (customer_id) "
        "WHERE c.customer_id = $id GROUP BY ALL",
        {"id": customer_id},
    )
    if not rows:
        raise ValueError(f"no customer with id {customer_id}")
    summary = rows[0]
    orders = summary["orders"]
    summary["segment"] = "key account" if orders >= 12 else "regular" if orders >= 5 else "occasional"
    return summary
