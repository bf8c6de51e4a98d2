"""Domain: schemas, repositories, access policy and state machines."""
