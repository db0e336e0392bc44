"""Token authoring for clients: mint, attest, delegate and inspect tokens
(never imported inside the database)."""
