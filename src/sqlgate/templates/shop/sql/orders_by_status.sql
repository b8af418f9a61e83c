SELECT status, count(*) AS orders, sum(total) AS value
FROM order_totals
WHERE order_date BETWEEN $date_from AND $date_to
GROUP BY status
ORDER BY orders DESC
