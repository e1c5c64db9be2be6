"""What several test modules share: free ports, a hand-moved clock, polling under a
deadline, and a real Redis. One copy each."""
