"""Tables, plots and the tour: everything that turns results into something to read or look at."""
